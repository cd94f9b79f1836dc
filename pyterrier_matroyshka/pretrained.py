"""Named pretrained variants: the trained Matroyshka re-rankers that install with the package.

    MatroyshkaReRanker.from_pretrained()                           # the default variant (smollm2-mix), full depth
    MatroyshkaReRanker.from_pretrained("smollm2-scifact", shape="L15")  # the SciFact specialist
    MatroyshkaScorer.from_pretrained("smollm2-scifact").compute_score(pairs, shape="L30:r2@4")

A variant is a public base model plus LoRA adapters kept in ``models/<folder>/`` of the repository (one
folder per adapter: the stage-1 adapter, merged into the base, and the compensation adapters, picked by
shape). The wheel carries those folders as package data, so an installed package finds them beside its
modules; a checkout finds them in ``models/``. ``$MATROYSHKA_MODELS`` names one more folder to look in.
A variant whose adapters are found nowhere is an error that says how to get them: the untrained base is
never used in their place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UserError
from .offline.base_models import SMOLLM2_ID

MODELS_ENV = "MATROYSHKA_MODELS"


@dataclass(frozen=True)
class Variant:
    """A trained model: its base, its adapters and the settings it was chosen with."""

    name: str
    folder: str  #: the folder under ``models/`` that holds its adapters and model card
    base: str  #: hub id of the base model (offline: converted from a PyPI package, see ``offline.base_models``)
    max_length: int  #: passage tokens, as trained
    fusion_weight: float  #: the first stage's share in ``FirstStageFusion``, chosen on held-out training queries
    description: str
    merged: tuple[str, ...] = ("stage1",)  #: adapters merged into the base, in order
    compensation: tuple[str, ...] = ("vertical", "r2", "r4")  #: adapters picked by the shape's ratio


#: every variant, by name; add a trained model with one line here
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("smollm2-scifact", "matroyshka-smollm2-scifact", SMOLLM2_ID, max_length=128, fusion_weight=0.5,
            description="SmolLM2-135M-Instruct trained with the three Matroyshka stages on SciFact train"),
    Variant("smollm2-mix", "matroyshka-smollm2-mix", SMOLLM2_ID, max_length=128, fusion_weight=0.5,
            description="the SciFact model's stage 1 continued on the diverse training mix (MS MARCO, NQ, SQuAD, "
                        "ARES, MedQuAD, SciFact train); no compensation adapters yet", compensation=()),
)}
#: the variant used when none is named (CLI, main job, ``from_pretrained()``)
DEFAULT_VARIANT = "smollm2-mix"


def variant(name: Optional[str] = None) -> Variant:
    """The variant called ``name`` (default: :data:`DEFAULT_VARIANT`)."""
    name = name or DEFAULT_VARIANT
    if name not in VARIANTS:
        raise UserError(f"unknown pretrained variant {name!r}; the variants are {sorted(VARIANTS)}. For a checkpoint "
                         "folder or hub id, use MatroyshkaScorer(path, adapters=...) or MatroyshkaReRanker(path, ...)")
    return VARIANTS[name]


def models_dirs() -> list[Path]:
    """Where variant folders are looked for, in order: ``$MATROYSHKA_MODELS``, the installed package's data,
    the repository's ``models/``."""
    here = Path(__file__).resolve().parent
    extra = [Path(os.environ[MODELS_ENV])] if os.environ.get(MODELS_ENV) else []
    return extra + [here / "models", here.parent / "models"]


def variant_dir(name: Optional[str] = None) -> Path:
    """The folder holding every adapter of the variant; an error that says how to get them when none does."""
    chosen = variant(name)
    needed = chosen.merged + chosen.compensation
    for root in models_dirs():
        folder = root / chosen.folder
        if all((folder / adapter / "adapter_config.json").is_file() for adapter in needed):
            return folder
    looked = ", ".join(str(root / chosen.folder) for root in models_dirs())
    raise FileNotFoundError(
        f"the adapters of pretrained variant {chosen.name!r} ({', '.join(needed)}) are not installed; looked in "
        f"{looked}. They ship inside the pyterrier-matroyshka wheel and in the repository's models/{chosen.folder}: "
        f"reinstall from a wheel built from a checkout that has them (pip wheel .), set {MODELS_ENV} to a folder "
        f"holding {chosen.folder}/, or train them (bash train/recipe.sh, see train/README.md)")


def scorer_settings(name: Optional[str] = None) -> tuple[str, dict]:
    """``(base, keyword arguments of MatroyshkaScorer)`` that load the variant as it was trained."""
    chosen, folder = variant(name), variant_dir(name)
    # merged compensation: a small model on a CPU runs about twice as fast without the LoRA matmuls
    return chosen.base, dict(adapters=[str(folder / a) for a in chosen.merged],
                             compensation=[str(folder / a) for a in chosen.compensation],
                             max_length=chosen.max_length, merge_compensation=True)
