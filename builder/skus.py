"""The GPU SKU registry: what each deployment target is, which precisions it runs, and who builds for it.

Figures are vendor specifications (memory size and bandwidth), used by build plans; they are not
measurements. `cpu` is the PyTorch reference backend on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

from nld.errors import NLDError

PRECISIONS = ("bf16", "fp16", "fp8", "int4-awq", "nvfp4")


@dataclass(frozen=True)
class Sku:
    name: str
    description: str
    compute_capability: str | None  # "10.0"; None for the cpu target
    cuda_arch: str | None  # nvcc -arch, e.g. sm_100a
    memory_gb: float  # decimal GB, as vendors state it
    memory_kind: str
    bandwidth_gbs: float  # GB/s
    host_arch: str
    precisions: tuple[str, ...]
    engine_builder: str | None  # "tensorrt" (datacenter), "tensorrt-rtx", or None (no engine)
    notes: str = ""


SKUS: dict[str, Sku] = {
    sku.name: sku
    for sku in (
        Sku(
            "gb200",
            "NVIDIA GB200 (one Blackwell GPU of the superchip)",
            "10.0",
            "sm_100a",
            186.0,
            "HBM3e",
            8000.0,
            "aarch64",
            PRECISIONS,
            "tensorrt",
            "datacenter TensorRT / TensorRT-LLM engines; built on a GPU host",
        ),
        Sku(
            "rtx-pro-6000",
            "NVIDIA RTX PRO 6000 Blackwell",
            "12.0",
            "sm_120a",
            96.0,
            "GDDR7",
            1790.0,
            "x86_64",
            PRECISIONS,
            "tensorrt-rtx",
            "TensorRT-RTX engines for SM120 build on a CPU-only machine",
        ),
        Sku(
            "dgx-spark",
            "NVIDIA DGX Spark (GB10)",
            "12.1",
            "sm_121a",
            128.0,
            "unified LPDDR5x",
            273.0,
            "aarch64",
            PRECISIONS,
            "tensorrt-rtx",
            "memory shared with the CPU; 4-bit weights are what make it fast",
        ),
        Sku(
            "cpu",
            "the PyTorch reference backend on the host CPU",
            None,
            None,
            0.0,
            "host RAM",
            0.0,
            "any",
            ("bf16", "fp16"),
            None,
            "no engine; serves with the torch backend (float32 compute by default)",
        ),
    )
}


def get_sku(name: str) -> Sku:
    """The registered SKU, or an error listing the known ones."""
    if name not in SKUS:
        raise NLDError(f"unknown target '{name}': choose one of {', '.join(SKUS)}")
    return SKUS[name]


def check_precision(sku: Sku, precision: str) -> None:
    """Refuse a precision the SKU cannot run, naming both."""
    if precision not in PRECISIONS:
        raise NLDError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if precision not in sku.precisions:
        raise NLDError(
            f"target '{sku.name}' does not support precision '{precision}' (supported: {', '.join(sku.precisions)})"
        )


def targets_table() -> str:
    """The SKU x precision matrix as Markdown (`nld-build --list-targets`)."""
    header = ["target", "SM", "arch", "memory", "bandwidth", "engine", *PRECISIONS]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for sku in SKUS.values():
        memory = f"{sku.memory_gb:g} GB {sku.memory_kind}" if sku.memory_gb else sku.memory_kind
        bandwidth = f"{sku.bandwidth_gbs / 1000:g} TB/s" if sku.bandwidth_gbs else "-"
        cells = [sku.name, sku.compute_capability or "-", sku.cuda_arch or "-", memory, bandwidth]
        cells += [sku.engine_builder or "none"]
        cells += ["yes" if p in sku.precisions else "-" for p in PRECISIONS]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
