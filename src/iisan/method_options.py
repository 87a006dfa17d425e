"""The options that belong to one family of methods, each family's config class.

A method's registry entry (:mod:`iisan.methods`) names the class holding its own options;
:class:`~iisan.config.TrainConfig` holds one of each (``content``, ``knn``, ``tuning``), and a
method whose entry names another class leaves that one at its
:meth:`~MethodOptions.unused` values, so a saved ``config.json`` says what the run did. On
the command line and in ``--config`` files their fields are flat options like every other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from iisan.options import check_options, option

Precision = Literal["auto", "fp32", "bf16"]  # encoders' compute precision; see devices.compute_dtype
# The content floor's whitening (--knn-whiten, --blend-whiten): off, on, or whichever validation
# prefers; chosen by iisan.models.baselines.knn.choose_whitening for both.
Whitening = Literal["auto", "on", "off"]

CONTENT = "New and rare items"
TUNING = "Encoder baselines (fft, adapter, lora, bitfit)"
UNISREC = "UniSRec (the content peer)"


class MethodOptions:
    """Base of a method family's option class: validated from its fields, and recorded at
    :meth:`unused` by a run of a method outside the family."""

    def __post_init__(self) -> None:
        check_options(self)

    @classmethod
    def unused(cls) -> MethodOptions:
        """What a method without these options records (by default, the defaults)."""
        return cls()


@dataclass(frozen=True)
class ContentConfig(MethodOptions):
    """What the content methods (``iisan``, ``frozen``) add for new and rare items: per-item
    id offsets while training, and whether a score blend is fitted after it (its options:
    :class:`~iisan.config.ScoreConfig`)."""

    id_offset: bool = option(True, panel=CONTENT,
                             help="iisan, frozen: add a learned per-item vector, zero at the start, to each "
                                  "training item's content embedding; items added later stay content only.")
    # 10x below lr: at lr the offsets memorise the training items within a few epochs.
    id_offset_lr: float = option(1e-4, above=0, panel=CONTENT, help="Learning rate of the id offsets.")
    blend: bool = option(
        True, panel=CONTENT,
        help="iisan, frozen: after training, blend each score with the content floor's (knn) and add priors "
             "for cold and tail items, weighed on the validation split (iisan.scoring; `iisan calibrate` "
             "fits it again); what lets a trained content model rank new and rare items.")
    @classmethod
    def unused(cls) -> ContentConfig:
        """What a method without these options records: no offsets, no blend."""
        return cls(id_offset=False, blend=False)


@dataclass(frozen=True)
class KnnConfig(MethodOptions):
    """The content-only floor's own option (``knn``)."""

    knn_whiten: Whitening = option(
        "off", panel=CONTENT,
        help="knn: whiten the content before the cosine (fitted on the catalogue), as --blend-whiten does for the "
             "blend's floor: on, off, or auto (both ways, validation keeps the better). Off by default: the plain "
             "cosine is the floor the results compare with.")
    knn_terms: int = option(
        0, minimum=0, maximum=8192, panel=CONTENT,
        help="knn: add the cosine of the items' word vectors (as --blend-terms: TF-IDF over words and pairs "
             "of words, hashed into this many columns, fitted on the catalogue's texts) to the frozen "
             "content's. 0 by default: the frozen content alone is the floor the results compare with.")


@dataclass(frozen=True)
class EncoderTuningConfig(MethodOptions):
    """The options of the methods that train the encoders themselves (``fft``, ``adapter``,
    ``lora``, ``bitfit``)."""

    lora_rank: int = option(8, minimum=1, panel=TUNING,
                            help="LoRA rank for --method lora (alpha = 2 x rank).")
    adapter_bottleneck: int = option(64, minimum=1, panel=TUNING,
                                     help="Width of the Houlsby adapters' bottleneck for --method adapter.")
    precision: Precision = option(
        "auto", panel=TUNING,
        help="Compute precision of the encoders that fft, adapter, lora and bitfit run and train: auto (bf16 "
             "autocast on a GPU that supports it, else fp32), fp32 or bf16. uncached mode runs its frozen "
             "encoders at the cache's precision; the side network and user encoder stay fp32.")


UnisrecSetting = Literal["transductive", "inductive"]


@dataclass(frozen=True)
class UnisrecConfig(MethodOptions):
    """The content peer's options (``unisrec``: :mod:`iisan.models.baselines.unisrec`)."""

    unisrec_setting: UnisrecSetting = option(
        "transductive", panel=UNISREC,
        help="unisrec: transductive (the adapted text plus a learned item-id embedding) or inductive (the "
             "adapted text alone: a new item is ranked as a trained one is).")
    unisrec_experts: int = option(8, minimum=1, panel=UNISREC,
                                  help="unisrec: parametric whitening experts in the adaptor (the paper's 8).")
    unisrec_dropout: float = option(0.2, minimum=0, panel=UNISREC,
                                    help="unisrec: dropout on the frozen text embedding inside each expert.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.unisrec_dropout < 1:
            from iisan.errors import ConfigError

            raise ConfigError(f"unisrec_dropout must be in [0, 1), got {self.unisrec_dropout}")
