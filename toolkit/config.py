"""Typed run configuration: dataclasses, YAML presets (``toolkit/presets/*.yaml``) and ``key=value`` overrides.

A run's config is ``preset YAML`` <- ``--config-file FILE`` <- overrides such as ``student.epochs=3``. Every value is
checked against its field's type before anything runs; an unknown key names the nearest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toolkit import ToolkitError

PRESET_DIR = Path(__file__).resolve().parent / "presets"

# The eight configurations of METHOD.md section 5: (KD, IG overlay, attention transfer).
CONFIGURATIONS: dict[str, tuple[bool, bool, bool]] = {
    "Student": (False, False, False),
    "KD": (True, False, False),
    "IG": (False, True, False),
    "AT": (False, False, True),
    "KD_IG": (True, True, False),
    "KD_AT": (True, False, True),
    "IG_AT": (False, True, True),
    "KD_IG_AT": (True, True, True),
}


def canonical_configuration(name: str) -> str:
    """``KD+IG``, ``kd_ig`` and ``KD_IG`` all name ``KD_IG``; ``student``/``baseline`` name ``Student``."""
    key = name.strip().replace("+", "_").replace("-", "_").upper()
    if key in ("STUDENT", "BASELINE", "CE"):
        return "Student"
    if key in CONFIGURATIONS:
        return key
    raise ToolkitError(f"unknown configuration '{name}'; choose one of {', '.join(CONFIGURATIONS)} (or with '+')")


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    """``cifar10`` (see toolkit.data.load_cifar10 for where it is found), ``folder`` (your own images in class
    sub-folders, ``train_dir``) or ``synthetic``."""
    data_dir: str | None = None
    download: bool = False
    train_dir: str | None = None
    """``folder``: one sub-folder per class (torchvision ImageFolder layout)."""
    val_dir: str | None = None
    """``folder``: optional validation folder (same classes); without it ``val_size`` is carved from train."""
    test_dir: str | None = None
    """``folder``: optional test folder (same classes); without it ``test_size`` is carved from train."""
    image_size: int | None = None
    """Side in pixels the models see (square). null: 32 for cifar10/synthetic; required for ``folder``."""
    val_size: int | float = 5000
    """Stratified validation hold-out taken from train (count, or fraction in (0, 1)); used for any model selection,
    never the test set."""
    test_size: int | float = 0.1
    """``folder`` without ``test_dir``: stratified test hold-out carved from train (count or fraction)."""
    skip_bad: bool = False
    """``folder``: skip unreadable images (counted in the summary) instead of stopping with an error."""
    cache_dir: str | None = None
    """``folder``: where decoded images are cached (default ~/.cache/edge-distill/decoded)."""
    in_memory: str = "auto"
    """``folder``: ``auto`` (RAM when the decoded split fits comfortably, else memory-mapped), ``true`` or ``false``."""
    augment: str = "auto"
    """``padcrop`` (zero-pad + random crop + flip), ``rrc`` (random resized crop + flip), ``none``; ``auto``: padcrop
    up to 64 px, rrc above."""
    padding: int | None = None
    """padcrop padding in pixels; null = image_size // 8 (4 at 32 px)."""
    rrc_scale_min: float = 0.25
    """rrc: smallest crop area as a fraction of the image (aspect ratio 3/4 to 4/3)."""
    train_subset: float | int | None = None
    """Stratified subset of the remaining train split: a fraction, a count, or null for all."""
    test_subset: int | None = None
    """First N test images only (smoke runs); null for the full test set."""
    split_seed: int = 0
    subset_seed: int = 0
    synthetic_per_class: int = 40


@dataclass
class OptimConfig:
    """One training stage (teacher fine-tune or student)."""

    model: str = "resnet20"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    """``adam`` or ``sgd`` (Nesterov momentum)."""
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    """``constant``, ``onecycle`` or ``cosine`` (stepped per batch)."""
    max_steps: int | None = None
    """Stop each epoch after this many steps (tests of large presets); null for full epochs."""
    pretrained: bool = False
    """``torchvision:``/``timm:`` models: start from the library's published weights (downloads them: needs internet)
    with a fresh head for the data's classes."""


@dataclass
class TeacherConfig(OptimConfig):
    model: str = "resnet56"
    checkpoint: str | None = None
    """Pretrained weights to start from (relative paths are tried from the repo root too)."""
    mode: str = "finetune"
    """``finetune`` (train from ``checkpoint``), ``scratch`` (train from random init) or ``load`` (use as is)."""
    reset_head: bool = False
    """``finetune``: replace a checkpoint's classifier whose class count differs from the data's with a fresh one."""
    trust_pickle: bool = False
    """Allow a checkpoint that is a pickled whole model (unpickling runs code from the file: only for files you trust)."""
    epochs: int = 2
    lr: float = 0.02


@dataclass
class IGConfig:
    """Integrated gradients on the teacher (METHOD.md section 3)."""

    steps: int | str = 50
    """Interpolation steps, or ``auto``: the fewest of 4, 8, 12, 16, 24, 32, 50 whose IG on a seeded sample of train
    images passes the completeness check (``auto_tolerance``) and matches the 50-step maps (``auto_min_corr``);
    see toolkit.attribution.steps and docs/method-choices.md."""
    auto_sample: int = 32
    """``steps=auto``: train images in the seeded sample."""
    auto_seed: int = 0
    auto_tolerance: float = 0.05
    """``steps=auto``: largest mean relative completeness error |sum(attr) - (F(x) - F(b))| / |F(x) - F(b)|."""
    auto_min_corr: float = 0.99
    """``steps=auto``: smallest mean per-image Pearson correlation of the maps with the 50-step maps."""
    method: str = "gausslegendre"
    """Captum's quadrature: ``gausslegendre``, ``riemann_trapezoid``, ``riemann_left``, ..."""
    baseline: str = "mean"
    """``mean``: zeros in the teacher's normalised space, i.e. the dataset-mean colour; ``black``: zeros in [0, 1]."""
    target: str = "label"
    """``label`` (the true class, as the paper) or ``pred`` (the teacher's top-1)."""
    batch_size: int = 16
    """Images per IG call; each expands to batch_size * steps forward/backward rows."""
    rows: int | str = "auto"
    """Most interpolated rows (images x steps) per forward/backward pass, or ``auto``: on CPU the fastest of 32, 64
    and 128 rows, timed on the first images before a large computation (the best size depends on the teacher and
    the thread count, see ``toolkit.attribution.ig.CPU_ROWS_CANDIDATES``); 4096 on CUDA.
    Changes speed only (the maps differ by float rounding), so it is in no fingerprint (``SPEED_ONLY_SETTINGS``)."""
    chunk_size: int = 1024
    """Images per saved chunk: an interrupted precomputation resumes after the last finished chunk."""
    store_dtype: str = "float16"


@dataclass
class OverlayConfig:
    """IG overlay augmentation (METHOD.md section 4)."""

    prob: float = 0.1
    weight: float = 0.5
    """x = (1 - weight) * img + weight * map."""
    exponent_min: float = 1.0
    exponent_max: float = 2.0
    """Per-sample exponent s = exp(Uniform(ln min, ln max))."""


@dataclass
class LossConfig:
    temperature: float = 2.5
    alpha: float = 0.01
    """total = alpha * KD + (1 - alpha) * CE (+ at_weight * AT)."""
    at_form: str = "paper"
    """``paper``: g * mean over tapped layers of mean((A_t - A_s)^2) (METHOD.md section 2); ``zagoruyko``:
    beta / 2 * sum over layers, as Zagoruyko & Komodakis (toolkit.distill.losses.AT_FORMS)."""
    at_weight: float | None = None
    """g (paper form) or beta (zagoruyko form); null = the form's published value, 0.8 or 1000."""
    at_layers: list | None = None
    """Layers tapped for AT: each item a module path present in both networks (``layer3``) or a [teacher path,
    student path] pair (``[layer4, features.12]``); null = the model family's rule (``python -m toolkit models``):
    one layer by METHOD.md's rule for MobileNetV2-CIFAR, the three stage outputs layer1-3 for CIFAR ResNets."""

    @property
    def at_weight_value(self) -> float:
        from toolkit.distill.losses import DEFAULT_AT_WEIGHT

        return float(DEFAULT_AT_WEIGHT[self.at_form] if self.at_weight is None else self.at_weight)


@dataclass
class RunConfig:
    preset: str = "cpu"
    configuration: str = "KD_IG"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    """``auto`` (bf16 autocast), ``bf16``, ``fp16`` (CUDA) or ``fp32``."""
    channels_last: bool = True
    compile: str = "auto"
    """torch.compile (inductor) of the model in each training step: ``off``, ``on`` (eager fallback with one warning
    line when compilation fails) or ``auto``: only on device types where it was measured to gain
    (toolkit.distill.compile.AUTO_COMPILE: none so far; on the 2-core AVX-512 CPU compiling cost more than it saved,
    reports/pipeline/bench-pipeline.md)."""
    teacher_outputs: str = "online"
    """``online``: teacher run on the student's actual input (default); ``cached``: logits of the un-augmented
    image keyed by sample index (an approximation, labelled as such in the summary)."""
    baseline: bool = True
    """Also train the same student without distillation (CE only) on the same split and seed, for comparison."""
    num_workers: int = 0
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: OptimConfig = field(default_factory=OptimConfig)
    ig: IGConfig = field(default_factory=IGConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses(self) -> tuple[bool, bool, bool]:
        """(KD, IG overlay, AT) for this run's configuration."""
        return CONFIGURATIONS[canonical_configuration(self.configuration)]


def _all_keys(values: dict, where: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        out.append(f"{where}{key}")
        if isinstance(value, dict):
            out += _all_keys(value, f"{where}{key}.")
    return out


def _suggest(key: str, where: str, base: dict, root: dict | None) -> str:
    """``; did you mean 'student.epochs'?`` for the nearest known key (difflib), or the known keys of this level."""
    near = difflib.get_close_matches(key, list(base), n=1, cutoff=0.6)
    if near:
        return f"; did you mean '{where}{near[0]}'?"
    if root is not None:  # a key of another section: epochs -> student.epochs / teacher.epochs
        full = [k for k in _all_keys(root) if k.rsplit(".", 1)[-1] == key]
        near = full or difflib.get_close_matches(f"{where}{key}", _all_keys(root), n=1, cutoff=0.75)
        if near:
            return f"; did you mean {' or '.join(repr(k) for k in near[:3])}?"
    return f"; known: {', '.join(base)}"


ADDED_SETTINGS: dict[str, Any] = {
    "data.train_dir": None, "data.val_dir": None, "data.test_dir": None, "data.image_size": None,
    "data.test_size": 0.1, "data.skip_bad": False, "data.cache_dir": None, "data.in_memory": "auto",
    "data.augment": "auto", "data.padding": None, "data.rrc_scale_min": 0.25,
    "teacher.pretrained": False, "student.pretrained": False, "teacher.reset_head": False, "teacher.trust_pickle": False,
    "ig.auto_sample": 32, "ig.auto_seed": 0, "ig.auto_tolerance": 0.05, "ig.auto_min_corr": 0.99,
    "compile": "auto",
}
"""Settings added after runs and studies were first recorded, with the value that means "not used" (the behaviour
from before the key existed: on CIFAR-10, ``data.augment=auto`` is the 4-px pad-and-crop every earlier run used).
Fingerprints leave a key out while it holds that value, so finished runs, IG caches and committed studies made before
the key existed are still recognised; any other value is part of the fingerprint (``fingerprint_settings``)."""


SPEED_ONLY_SETTINGS = frozenset({"ig.rows"})
"""Settings that change only speed (results differ by float rounding at most): never part of a fingerprint, so
changing one neither refuses nor retrains anything."""


def fingerprint_settings(values: dict, prefix: str = "") -> dict:
    """``values`` (a config section as a dict with ``prefix`` such as "ig.", or the flat ``a.b`` form with prefix "")
    less the ``SPEED_ONLY_SETTINGS`` and the ``ADDED_SETTINGS`` that hold their "not used" value: what run, stage and
    study fingerprints hash."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if name in SPEED_ONLY_SETTINGS:
            continue
        if name in ADDED_SETTINGS and value == ADDED_SETTINGS[name] and type(value) is type(ADDED_SETTINGS[name]):
            continue
        out[key] = value
    return out


def _merge(base: dict, update: dict, where: str = "", root: dict | None = None) -> dict:
    root = base if root is None else root
    out = dict(base)
    for key, value in update.items():
        if key not in base:
            raise ToolkitError(f"unknown config key '{where}{key}'{_suggest(str(key), where, base, root)}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{where}{key}.", root)
        else:
            out[key] = value
    return out


_TYPE_WORDS = {int: "a whole number (int)", float: "a number (float)", bool: "true or false (bool)",
               str: "text (str)", list: "a list such as [a, b]", dict: "a mapping", type(None): "null"}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against a field's annotation (int, float, bool, str, list, ``X | None``, ``int | float``);
    returns it (a number for a float field given YAML 1.1's string '1e-3', text for a str field given a number) or
    raises one ToolkitError line naming the key, the value and the expected type."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    options = tuple(typing.get_origin(o) or o for o in options)
    if value is None and type(None) in options:
        return value
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and not isinstance(value, bool):
            if isinstance(value, (int, float)):
                return value
    for kind in options:  # lenient conversions, only when no option took the value as it is
        if kind is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if kind is str and isinstance(value, bool):  # in_memory=true
            return "true" if value else "false"
        if kind is str and isinstance(value, (int, float)):  # a folder or model named 2024
            return str(value)
        if kind is str and isinstance(value, str):
            return value
        if kind is list and isinstance(value, (list, tuple)):
            return list(value)
    if not all(k in _TYPE_WORDS for k in options):
        return value  # an annotation this check does not know: leave it to validate()
    expected = " or ".join(_TYPE_WORDS[k] for k in options)
    if isinstance(value, dict):
        got = "a mapping"
    else:
        got = f"{value!r} ({type(value).__name__})"
    raise ToolkitError(f"config key {key}: expected {expected}, got {got}")


def _from_dict(cls: type, values: dict, where: str = "") -> Any:
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        f = fields[key]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if sub is not None and dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ToolkitError(f"config key {where}{key} is a section, not a value (got {value!r}); set its keys, "
                                   f"e.g. {where}{key}.{dataclasses.fields(sub)[0].name}=...")
            kwargs[key] = _from_dict(sub, value, f"{where}{key}.")
        else:
            kwargs[key] = _check_type(f"{where}{key}", value, hints[key])
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ToolkitError(f"override '{text}' is not key=value (e.g. student.epochs=3)")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ToolkitError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ToolkitError(f"config {path} must be a mapping, got {type(values).__name__}")
    return values


def build_config(preset: str = "cpu", config_file: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Preset YAML, then an optional YAML file, then ``a.b=value`` overrides, validated into a RunConfig."""
    preset_path = PRESET_DIR / f"{preset}.yaml"
    if not preset_path.is_file():
        raise ToolkitError(f"unknown preset '{preset}'; available: {', '.join(list_presets())}")
    values = _merge(RunConfig().to_dict(), load_yaml(preset_path))
    values["preset"] = preset
    if config_file:
        values = _merge(values, load_yaml(Path(config_file)))
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        values = _merge(values, nested)
    cfg = _from_dict(RunConfig, values)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    from toolkit.models.derive import canonical_student_name
    from toolkit.models.registry import get_spec

    cfg.configuration = canonical_configuration(cfg.configuration)
    if isinstance(cfg.compile, (bool, str)) and str(cfg.compile).lower() in ("true", "false"):
        cfg.compile = "on" if str(cfg.compile).lower() == "true" else "off"  # YAML 1.1 reads on/off as booleans
    for stage in (cfg.teacher, cfg.student):
        if not isinstance(stage.model, str) or not stage.model:
            raise ToolkitError(f"model names must be strings such as resnet20 or torchvision:resnet18, got {stage.model!r}")
    cfg.student.model = canonical_student_name(cfg.student.model, cfg.teacher.model)
    get_spec(cfg.student.model)
    get_spec(cfg.teacher.model)
    checks = [
        (cfg.teacher.mode in ("finetune", "scratch", "load"), f"teacher.mode must be finetune, scratch or load, got '{cfg.teacher.mode}'"),
        (cfg.teacher.mode == "scratch" or cfg.teacher.checkpoint or (cfg.teacher.mode == "finetune" and cfg.teacher.pretrained),
         f"teacher.mode '{cfg.teacher.mode}' needs teacher.checkpoint=PATH"
         + (" (or teacher.pretrained=true for a torchvision:/timm: model, which downloads its weights)"
            if cfg.teacher.mode == "finetune" else "")),
        (cfg.teacher_outputs in ("online", "cached"), f"teacher_outputs must be online or cached, got '{cfg.teacher_outputs}'"),
        (cfg.data.dataset in ("cifar10", "synthetic", "folder"), f"data.dataset must be cifar10, folder or synthetic, got '{cfg.data.dataset}'"),
        (cfg.data.dataset != "folder" or cfg.data.train_dir, "data.dataset=folder needs data.train_dir=PATH (one sub-folder per class)"),
        (cfg.data.dataset != "folder" or cfg.data.image_size,
         "data.dataset=folder needs data.image_size=N, the side in pixels the models see (e.g. 64, 96, 128, 224)"),
        (cfg.data.image_size is None or (isinstance(cfg.data.image_size, int) and not isinstance(cfg.data.image_size, bool)
                                         and 8 <= cfg.data.image_size <= 1024),
         f"data.image_size must be a whole number of pixels in [8, 1024], got {cfg.data.image_size!r}"),
        (cfg.data.dataset == "folder" or cfg.data.image_size in (None, 32),
         f"data.image_size={cfg.data.image_size} needs data.dataset=folder (CIFAR-10 and synthetic are 32x32)"),
        (cfg.data.augment in ("auto", "padcrop", "rrc", "none"), f"data.augment must be auto, padcrop, rrc or none, got '{cfg.data.augment}'"),
        (str(cfg.data.in_memory).lower() in ("auto", "true", "false"), f"data.in_memory must be auto, true or false, got '{cfg.data.in_memory}'"),
        (isinstance(cfg.data.rrc_scale_min, (int, float)) and 0 < cfg.data.rrc_scale_min <= 1,
         f"data.rrc_scale_min must be in (0, 1], got {cfg.data.rrc_scale_min!r}"),
        (cfg.data.padding is None or (isinstance(cfg.data.padding, int) and cfg.data.padding >= 0),
         f"data.padding must be a whole number >= 0 or null, got {cfg.data.padding!r}"),
        (not cfg.teacher.reset_head or cfg.teacher.mode == "finetune",
         "teacher.reset_head=true gives the teacher an untrained head: use it with teacher.mode=finetune"),
        (0 <= cfg.overlay.prob <= 1, f"overlay.prob must be in [0, 1], got {cfg.overlay.prob}"),
        (0 <= cfg.overlay.weight <= 1, f"overlay.weight must be in [0, 1], got {cfg.overlay.weight}"),
        (0 < cfg.overlay.exponent_min <= cfg.overlay.exponent_max, "overlay exponents need 0 < exponent_min <= exponent_max"),
        (0 <= cfg.loss.alpha <= 1, f"loss.alpha must be in [0, 1], got {cfg.loss.alpha}"),
        (cfg.loss.temperature > 0, f"loss.temperature must be > 0, got {cfg.loss.temperature}"),
        (cfg.loss.at_form in ("paper", "zagoruyko"), f"loss.at_form must be paper or zagoruyko, got '{cfg.loss.at_form}'"),
        (cfg.loss.at_weight is None or (isinstance(cfg.loss.at_weight, (int, float)) and cfg.loss.at_weight >= 0),
         f"loss.at_weight must be a number >= 0 or null, got {cfg.loss.at_weight!r}"),
        (cfg.loss.at_layers is None or (isinstance(cfg.loss.at_layers, list) and cfg.loss.at_layers
                                        and all(isinstance(n, str) or (isinstance(n, list) and len(n) == 2
                                                                       and all(isinstance(m, str) for m in n))
                                                for n in cfg.loss.at_layers)),
         f"loss.at_layers must be a non-empty list of module paths or [teacher, student] pairs, or null, "
         f"got {cfg.loss.at_layers!r}"),
        (cfg.ig.steps == "auto" or (isinstance(cfg.ig.steps, int) and not isinstance(cfg.ig.steps, bool)
                                    and cfg.ig.steps >= 1),
         f"ig.steps must be a whole number >= 1 or auto, got {cfg.ig.steps!r}"),
        (cfg.ig.rows == "auto" or (isinstance(cfg.ig.rows, int) and not isinstance(cfg.ig.rows, bool)
                                   and cfg.ig.rows >= 1),
         f"ig.rows must be a whole number >= 1 or auto, got {cfg.ig.rows!r}"),
        (cfg.ig.steps != "auto" or (cfg.ig.auto_sample >= 1 and cfg.ig.auto_tolerance >= 0),
         f"ig.auto_sample must be >= 1 and ig.auto_tolerance >= 0, got {cfg.ig.auto_sample} and {cfg.ig.auto_tolerance}"),
        (cfg.compile in ("off", "auto", "on"), f"compile must be off, auto or on, got {cfg.compile!r}"),
        (cfg.ig.baseline in ("mean", "black"), f"ig.baseline must be mean or black, got '{cfg.ig.baseline}'"),
        (cfg.ig.target in ("label", "pred"), f"ig.target must be label or pred, got '{cfg.ig.target}'"),
    ]
    for stage in (cfg.teacher, cfg.student):
        for name in ("lr", "weight_decay", "momentum"):
            if not isinstance(getattr(stage, name), (int, float)):
                raise ToolkitError(f"{name} must be a number, got {getattr(stage, name)!r}")
        checks += [
            (stage.optimizer in ("adam", "sgd"), f"optimizer must be adam or sgd, got '{stage.optimizer}'"),
            (stage.schedule in ("constant", "onecycle", "cosine"), f"schedule must be constant, onecycle or cosine, got '{stage.schedule}'"),
            (stage.epochs >= 0 and stage.batch_size >= 1 and stage.lr > 0, "epochs >= 0, batch_size >= 1 and lr > 0 are required"),
        ]
    for ok, message in checks:
        if not ok:
            raise ToolkitError(message)


def save_config(cfg: RunConfig, path: Path) -> None:
    from toolkit.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
