"""Decoding modes as policies over the step seam."""

from __future__ import annotations

from nld.modes.ar import ar_policy
from nld.modes.base import Decoding, Generation, GenerationParams, PolicyFactory, run_policy
from nld.modes.diffusion import diffusion_policy
from nld.modes.linear_spec import linear_spec_policy
from nld.modes.quadratic_spec import quadratic_spec_policy

MODES: dict[str, PolicyFactory] = {
    "ar": ar_policy,
    "diffusion": diffusion_policy,
    "linear-spec": linear_spec_policy,
    "quadratic-spec": quadratic_spec_policy,
}

__all__ = ["MODES", "Decoding", "Generation", "GenerationParams", "run_policy"]
