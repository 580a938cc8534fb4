"""What the command lines share: `--help` that shows every option's default (`nld` and `nld-build`), and
argument types."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _worth_printing(default: object) -> bool:
    return not any(default is nothing for nothing in (None, False, argparse.SUPPRESS))  # `is`: 0.0 == False


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` to an option's help when it has a default worth printing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or not _worth_printing(action.default) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give `parser` and its subcommands the DefaultsFormatter; options without help text but with a
    default get `(default: X)` as their help (argparse prints no line for an empty help)."""
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        current.formatter_class = DefaultsFormatter
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.help is None and action.option_strings and _worth_printing(action.default):
                action.help = "(default: %(default)s)"
    return parser


def prompt_ids_type(text: str) -> list[int]:
    """`--prompt-ids 1,482,796` -> [1, 482, 796]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None


def read_messages(path: Path) -> list[dict]:
    """`--messages FILE` (or `-`: stdin): a JSON chat, checked; NLDError naming the file otherwise."""
    from nld.chat_template import check_messages
    from nld.errors import NLDError

    where = "stdin" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
        return check_messages(json.loads(text))
    except OSError as error:
        raise NLDError(f"--messages {where}: {error.strerror}") from None
    except (json.JSONDecodeError, ValueError) as error:
        raise NLDError(f"--messages {where}: {error}") from None


def quiet_stdout() -> None:
    """After a BrokenPipeError on stdout (`nld ... | head`): point stdout at /dev/null, so the flush at
    exit does not raise again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def apply_build(args: argparse.Namespace) -> None:
    """Fill --model, --backend and --dtype from `--build OUT`'s manifest where not given (then torch and
    float32 by default); keep --build only where it carries the chosen backend's artifacts."""
    build = getattr(args, "build", None)
    if build is not None:
        from nld.builder.artifacts import read_build

        info = read_build(build)
        args.model = args.model or str(info.model_dir)
        args.backend = args.backend or info.backend
        args.dtype = args.dtype or info.dtype
        if args.backend == "torch" or not info.artifacts_for_backend:
            args.build = None
    if hasattr(args, "backend"):
        args.backend = args.backend or "torch"
    if hasattr(args, "dtype"):
        args.dtype = args.dtype or "float32"


def add_output_controls(parser: argparse.ArgumentParser) -> None:
    """The stop-string, penalty and log-probability options `nld generate` and `nld client` share
    (unset: the engine's defaults, all off)."""
    parser.add_argument(
        "--stop", action="append", metavar="TEXT", help="end the output before this text (repeatable; needs tokenizer)"
    )
    parser.add_argument(
        "--repetition-penalty", type=float, help="scale the logits of ids seen in the prompt or output (1: off)"
    )
    parser.add_argument("--presence-penalty", type=float, help="subtract this from ids seen in the output (0: off)")
    parser.add_argument("--frequency-penalty", type=float, help="subtract this x an id's count in the output (0: off)")
    parser.add_argument(
        "--logprobs", type=int, metavar="N", help="report each token's log-probability and the N most likely ids"
    )


def output_control_values(args: argparse.Namespace) -> dict[str, object]:
    """The options of `add_output_controls` that were given, as GenerationParams fields."""
    values = {
        "stop": tuple(args.stop) if args.stop else None,
        "repetition_penalty": args.repetition_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "logprobs": args.logprobs,
    }
    return {name: value for name, value in values.items() if value is not None}


def print_logprobs(ids: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]]) -> None:
    """One stderr line per output id: its log-probability and the most likely ids at its position."""
    for token, logprob, top in zip(ids, logprobs, tops, strict=False):
        alternatives = ", ".join(f"{other} {value:.3f}" for other, value in top)
        print(f"  {token:>6} {logprob:8.3f}  [{alternatives}]", file=sys.stderr)
