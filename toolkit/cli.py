"""``python -m toolkit <command>``: models, evaluate, distill, teacher, experiment.

Every command turns a ToolkitError (bad input, missing file, stale cache) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from toolkit import ToolkitError, __version__


def cmd_models(args: argparse.Namespace) -> int:
    from toolkit.models.derive import derivable_students
    from toolkit.models.profile import profile_model
    from toolkit.models.registry import get_spec, list_models

    size, num_classes = args.image_size, args.num_classes
    if size < 8 or num_classes < 1:
        raise ToolkitError(f"--image-size must be >= 8 and --num-classes >= 1, got {size} and {num_classes}")
    teacher = args.family
    if teacher:
        students = derivable_students(teacher) or [n for n in list_models()
                                                   if n != teacher and get_spec(n).family_teacher == teacher]
        rows = [profile_model(n, num_classes, size, teacher=teacher).to_dict() for n in [teacher, *students]]
    else:
        rows = [profile_model(name, num_classes, size).to_dict() for name in list_models()]
    for r in rows:
        r["at_layers"] = list(get_spec(r["name"]).at_layers)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(22, *(len(r["name"]) for r in rows))
    fam_width = max(18, *(len(r["family"]) for r in rows))
    cf_head = f"CF vs {teacher}" if teacher else "CF vs family teacher"
    cf_width = max(9, len(cf_head))
    header = (f"{'name':<{width}} {'family':<{fam_width}} {'params':>11} {cf_head:>{cf_width}} {'MFLOPs':>9} "
              f"{'fp32 MB':>8}  AT layers")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<{width}} {r['family']:<{fam_width}} {r['params']:>11,} {r['compression_factor']:>{cf_width - 1}.2f}x "
              f"{r['mflops']:>9.1f} {r['fp32_mb']:>8.2f}  {','.join(r['at_layers']) or '-'}")
    versus = f"{teacher}" if teacher else "the family's teacher (mobilenetv2_cifar, resnet56)"
    print(f"\nCF = parameters of {versus} / parameters of the model; MFLOPs per {size}x{size} image forward "
          "(torch.utils.flop_counter, multiply-add = 2). AT layers: tapped for attention transfer "
          "(docs/method-choices.md; loss.at_layers overrides; '-': none known, name them).")
    if teacher and len(rows) == 1:
        print(f"{teacher} has no sequence of feature blocks to truncate, so no derived students (see "
              "toolkit/models/derive.py for the bases that have).")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from toolkit.data import load_cifar10
    from toolkit.device import select_device
    from toolkit.evaluate import evaluate_accuracy
    from toolkit.models import load_model

    model = load_model(args.model, args.checkpoint)
    data = load_cifar10(args.data_dir, download=args.download)
    test = data.test
    label = "all"
    if args.exact_only:
        if test.exact is None:
            label = "all (source is pristine: every image is exact)"
        else:
            test = test.subset(test.exact.nonzero().flatten())
            label = "bit-exact subset"
    device = select_device(args.device)
    acc = evaluate_accuracy(model.to(device), test.images, test.labels, device=device)
    result = {"model": args.model, "checkpoint": args.checkpoint, "data": data.description, "subset": label,
              "images": len(test), "test_acc": round(acc, 2)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model} ({args.checkpoint}) on {data.description}, {label} ({len(test):,} images): "
              f"top-1 {acc:.2f}%")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from toolkit.config import build_config
    from toolkit.pipeline import run_distill

    config_file = args.config_file
    if args.config_legacy:
        if config_file:
            raise ToolkitError("give the YAML file once, with --config-file (--config is its old name)")
        print("note: --config is now --config-file (the YAML file); --configuration is KD_IG etc.", file=sys.stderr)
        config_file = args.config_legacy
    cfg = build_config(args.preset, config_file, args.overrides)
    if args.data_dir:  # the same as data.data_dir=DIR, without YAML reading the path
        cfg.data.data_dir = args.data_dir
    if args.configuration:
        from toolkit.config import canonical_configuration

        cfg.configuration = canonical_configuration(args.configuration)
    run_distill(cfg, run_name=args.run, runs_dir=args.runs_dir, resume=not args.fresh,
                stages=args.stages.split(",") if args.stages else None, save_examples=args.save_examples)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from toolkit.experiments.cli import run_experiment_command

    return run_experiment_command(args)


def cmd_data(args: argparse.Namespace) -> int:
    from toolkit.data.to_folder import write_image_folder

    counts = write_image_folder(args.dataset, args.out, by=args.by, data_dir=args.data_dir, strict=args.strict,
                                limit_per_class=args.limit_per_class)
    for split, per_folder in counts.items():
        print(f"{args.out}/{split}: {sum(per_folder.values()):,} PNG files in {len(per_folder)} folders")
        for folder, n in per_folder.items():
            print(f"  {folder:<34} {n:>6,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m toolkit", description="Edge-deployment model-compression toolkit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list registered models with params, compression factor, MFLOPs, size")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")
    p.add_argument("--family", default=None, metavar="TEACHER",
                   help="list this teacher (any model name, e.g. torchvision:mobilenet_v2) and its derivable students")
    p.add_argument("--image-size", type=int, default=32, help="side in pixels for MFLOPs (default 32)")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the head (default 10)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("evaluate", help="test accuracy of a checkpoint on CIFAR-10")
    p.add_argument("--model", required=True, help="registered model name (see `models`)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (ours, or a pretrained CIFAR ResNet .th)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (npz pair or cifar-10-batches-py)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 with torchvision if not found")
    p.add_argument("--exact-only", action="store_true", help="only the bit-exact test images of the JPEG copy")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("distill", help="teacher -> IG maps -> distilled student (-> baseline student), into runs/<name>/",
                       description="Teacher -> IG maps -> distilled student -> baseline student, into RUNS_DIR/<run>/. "
                       "Cost: the default cpu preset takes about 35 min on a quiet 2-core CPU (measured: 33 min of "
                       "stages, README 'Results measured here'); --preset smoke takes under 2 min. Rerunning the "
                       "same command resumes from the last checkpoint.")
    p.add_argument("--preset", default="cpu", help="smoke (< 2 min), cpu (default, ~35 min on 2 cores), paper (a GPU "
                   "job) or folder (toolkit/presets/*.yaml)")
    p.add_argument("--run", "--name", dest="run", default=None,
                   help="run name: writes RUNS_DIR/<run>/ (default: <preset>-<configuration>, e.g. cpu-KD_IG, the same "
                   "rule as make without RUN=); use --name under torchrun, which claims --run")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--config-file", default=None, metavar="YAML", help="YAML file merged over the preset (make: "
                   "CONFIG_FILE=)")
    p.add_argument("--config", dest="config_legacy", default=None, help=argparse.SUPPRESS)  # old name of --config-file
    p.add_argument("--configuration", default=None, help="Student, KD, IG, AT, KD_IG, KD_AT, IG_AT or KD_IG_AT "
                   "(make: CONFIG=)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (npz pair or cifar-10-batches-py); the same as "
                   "data.data_dir=DIR")
    p.add_argument("--fresh", action="store_true", help="start over: an existing run folder is moved aside to "
                   "RUNS_DIR/<run>.old-<timestamp> (printed, nothing deleted) (make: RESUME=0)")
    p.add_argument("--stages", default=None, help="comma-separated subset of teacher,ig,student,baseline (checked "
                   "before any work: a stage whose input is missing names the stage to add)")
    p.add_argument("--save-examples", action="store_true", help="save a PNG grid of originals, IG maps and overlays")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. student.epochs=3 loss.alpha=0.1 (type-checked)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("data", help="dataset tools: to-folder (a built-in set as class folders of PNG files)")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("to-folder", help="write OUT/<split>/<class>/<file>.png, the layout data.dataset=folder reads")
    q.add_argument("--dataset", required=True, choices=["imagenet-aligned", "cifar10"])
    q.add_argument("--by", choices=["class", "synset"], default="class",
                   help="imagenet-aligned: 8 CIFAR-10 class folders or 29 synset folders (n02123045-tabby)")
    q.add_argument("--out", required=True, help="new or empty folder (never overwritten)")
    q.add_argument("--data-dir", default=None, help="folder of the dataset's .npz files (default: ../shared/datasets/...)")
    q.add_argument("--strict", action="store_true", help="imagenet-aligned: only the strict synset groups")
    q.add_argument("--limit-per-class", type=int, default=None, help="first N images of each folder (small copies)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("experiment", help="the paper's studies: ablation, montecarlo, sweep, generalize")
    p.add_argument("study", help="ablation, montecarlo, sweep or generalize")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
