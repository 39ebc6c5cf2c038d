"""``python -m toolkit <command>``: models, evaluate, distill, teacher, experiment.

Every command turns a ToolkitError (bad input, missing file, stale cache) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from toolkit import ToolkitError, __version__


def cmd_models(args: argparse.Namespace) -> int:
    from toolkit.models.profile import profile_model
    from toolkit.models.registry import list_models

    rows = [profile_model(name).to_dict() for name in list_models()]
    from toolkit.models.registry import get_spec

    for r in rows:
        r["at_layers"] = list(get_spec(r["name"]).at_layers)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'name':<22} {'family':<18} {'params':>10} {'CF':>9} {'MFLOPs':>8} {'fp32 MB':>8}  AT layers"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<22} {r['family']:<18} {r['params']:>10,} {r['compression_factor']:>8.2f}x "
              f"{r['mflops']:>8.1f} {r['fp32_mb']:>8.2f}  {','.join(r['at_layers'])}")
    print("\nCF = parameters of the family's teacher (mobilenetv2_cifar, resnet56) / parameters of the model; "
          "MFLOPs per 32x32 image forward (torch.utils.flop_counter, multiply-add = 2). AT layers: tapped for attention "
          "transfer (docs/method-choices.md; loss.at_layers overrides).")
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

    cfg = build_config(args.preset, args.config, args.overrides)
    if args.configuration:
        from toolkit.config import canonical_configuration

        cfg.configuration = canonical_configuration(args.configuration)
    run_distill(cfg, run_name=args.run, runs_dir=args.runs_dir, resume=not args.fresh,
                stages=args.stages.split(",") if args.stages else None, save_examples=args.save_examples)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from toolkit.experiments.cli import run_experiment_command

    return run_experiment_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m toolkit", description="Edge-deployment model-compression toolkit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list registered models with params, compression factor, MFLOPs, size")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")
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

    p = sub.add_parser("distill", help="teacher -> IG maps -> distilled student (-> baseline student), into runs/<name>/")
    p.add_argument("--preset", default="cpu", help="smoke, cpu or paper (toolkit/presets/*.yaml)")
    p.add_argument("--run", "--name", dest="run", default=None,
                   help="run name (default: <preset>-<configuration>); use --name under torchrun, which claims --run")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--config", default=None, help="YAML file merged over the preset")
    p.add_argument("--configuration", default=None, help="Student, KD, IG, AT, KD_IG, KD_AT, IG_AT or KD_IG_AT")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints in the run folder and start over")
    p.add_argument("--stages", default=None, help="comma-separated subset of teacher,ig,student,baseline")
    p.add_argument("--save-examples", action="store_true", help="save a PNG grid of originals, IG maps and overlays")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. student.epochs=3 loss.alpha=0.1")
    p.set_defaults(func=cmd_distill)

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
