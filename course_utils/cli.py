"""``python -m course_utils <command>``: the course's command line.

Commands import their module lazily, so ``label`` and ``score`` start fast and without torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .config import DEFAULT_SEED, REPO_ROOT


def _build_data(args: argparse.Namespace) -> int:
    from .data import build_embedded_dataset, ensure_embedded_dataset

    if args.force or args.out or args.max_studies:
        path = build_embedded_dataset(
            args.out,
            seed=args.seed,
            image_size=args.size,
            progress=True,
            max_studies=args.max_studies,
        )
    else:
        path = ensure_embedded_dataset(image_size=args.size, seed=args.seed)
    print(f"embedded dataset: {path}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from .labels import label_csv

    count = label_csv(args.input, args.output)
    print(f"labelled {count} reports -> {args.output}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from .metrics import main as score_main

    argv = ["--refs", str(args.refs), "--hyps", str(args.hyps)] + (["--json"] if args.json else [])
    return score_main(argv)


def _release(args: argparse.Namespace) -> int:
    from .release import main as release_main

    return release_main(["--check"] if args.check else [])


def _run(args: argparse.Namespace) -> int:
    from .runner import main as run_main

    argv = [str(p) for p in args.notebooks] + ["--profile", args.profile]
    return run_main(argv)


def _pretrain_encoder(args: argparse.Namespace) -> int:
    from .model.encoder import main as encoder_main

    argv = ["--size", str(args.size), "--seed", str(args.seed)]
    argv += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    return encoder_main(argv + (["--force"] if args.force else []))


def _bench(args: argparse.Namespace) -> int:
    import runpy

    sys.argv = ["benchmarks/run.py"] + (["--only", *args.only] if args.only else [])
    runpy.run_path(str(REPO_ROOT / "benchmarks" / "run.py"), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m course_utils", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_)
        cmd.set_defaults(func=func)
        return cmd

    cmd = add("build-data", _build_data, "build the embedded dataset (cached; --force rebuilds)")
    cmd.add_argument("--size", type=int, default=128, help="image side in pixels")
    cmd.add_argument("--seed", type=int, default=DEFAULT_SEED)
    cmd.add_argument("--out", type=Path, default=None, help="default: the data cache")
    cmd.add_argument("--force", action="store_true")
    cmd.add_argument("--max-studies", type=int, default=None, help="a small subset (smoke tests)")

    cmd = add(
        "pretrain-encoder",
        _pretrain_encoder,
        "pretrain the course's ViT encoder on the embedded data (cached; --force rebuilds)",
    )
    cmd.add_argument("--size", type=int, default=128, help="image side in pixels")
    cmd.add_argument("--seed", type=int, default=DEFAULT_SEED)
    cmd.add_argument("--epochs", type=int, default=None, help="default: the course recipe's")
    cmd.add_argument("--force", action="store_true")

    cmd = add(
        "label", _label, "CheXpert-style labels for a CSV of reports (chexpert-labeler drop-in)"
    )
    cmd.add_argument("input", type=Path, help="headerless one-column CSV of reports")
    cmd.add_argument("output", type=Path)

    cmd = add("score", _score, "BLEU/ROUGE/CIDEr scores for two JSON files of reports")
    cmd.add_argument("--refs", type=Path, required=True)
    cmd.add_argument("--hyps", type=Path, required=True)
    cmd.add_argument("--json", action="store_true", help="print one JSON object")

    cmd = add("release", _release, "regenerate student notebooks from the answer key")
    cmd.add_argument("--check", action="store_true")

    cmd = add("run", _run, "execute answer-key notebooks into runs/<timestamp>/")
    cmd.add_argument("notebooks", nargs="*", type=Path)
    cmd.add_argument("--profile", default="tiny", choices=["tiny", "gpu", "colab"])

    for name, (_module, help_) in PASSTHROUGH.items():
        sub.add_parser(name, help=f"{help_} (own options: {name} --help)", add_help=False)

    cmd = add("bench", _bench, "run benchmarks and write benchmarks/results.json")
    cmd.add_argument("--only", nargs="*", help="names of benchmarks to run")
    return parser


# Subcommands whose module parses its own arguments (``python -m course_utils grade --help``).
PASSTHROUGH = {
    "grade": ("course_utils.grade", "grade student submissions into a gradebook CSV"),
    "download-iu": ("course_utils.download", "download the public IU X-ray images (Open-i)"),
    "serve": ("course_utils.deploy.api", "serve the report API (FastAPI) of notebook 08"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        module = importlib.import_module(PASSTHROUGH[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
