"""Command line: /usr/bin/python3 -m trainer <command> [flags]; `-h` on any command explains its flags."""

from __future__ import annotations

import argparse
import sys

from .data import DATASETS, DEFAULT_FASHION_DIR
from .export import DEFAULT_OPSET
from .models import ARCHS
from .train import DEFAULT_VAL_SIZE
from .views_data import MAX_VIEWS
from .views_model import DEFAULT_VIEW_DROPOUT, FEATURE_AGGS, LOCAL_AGGS

# On a shared 2-core machine two OpenMP threads spin-wait on each other whenever another process
# takes a core; measured here under a parallel build, one thread ran a training step 6x faster.
THREADS_HELP = "torch CPU threads (1 is fastest on a busy 2-core machine; results may differ in the last bits)"


class HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if all(action.default is not v for v in (None, False, argparse.SUPPRESS)) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    parser = argparse.ArgumentParser(prog="python -m trainer", formatter_class=fmt,
                                     description="Train, calibrate, export and evaluate early-exit DDNN bundles "
                                                 "(ddnn-bundle/v1).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    t = sub.add_parser("train", formatter_class=fmt, help="train a DDNN, calibrate its exits, write a bundle",
                       description="Joint training of all exits, threshold calibration, ONNX export of each stage "
                                   "into a bundle (ddnn.json, <stage>.onnx, checkpoint.pt).")
    t.add_argument("--arch", choices=ARCHS, default="deep",
                   help="deep: device conv block + server with four convs; shallow: eBNN-style binarized device "
                        "+ server with two convs; deep3: device, edge and server stages")
    t.add_argument("--dataset", choices=DATASETS, default="fashion-mnist", help="data set to train and test on")
    t.add_argument("--data-dir", default=None,
                   help=f"where the data set lives (fashion-mnist: idx files, default {DEFAULT_FASHION_DIR}; "
                        "cifar10: the python batches data_batch_1..5 and test_batch)")
    t.add_argument("--filters", type=int, default=32,
                   help="width F: the device conv has F filters, later stages F and 2F")
    t.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    t.add_argument("--batch-size", type=int, default=128, help="samples per Adam step")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate at the start (cosine decay to 0)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (L2)")
    t.add_argument("--exit-weights", default=None,
                   help="comma-separated loss weight per exit, device first (default: 1 for every exit)")
    t.add_argument("--feature-l1", type=float, default=0.0, metavar="LAMBDA",
                   help="L1 activity penalty: adds LAMBDA times the mean |value| of every non-last stage's "
                        "features to the joint loss (0: off). BatchNorm lets the network shrink the features "
                        "instead of zeroing them, so --feature-hoyer buys more zeros per point of accuracy")
    t.add_argument("--feature-hoyer", type=float, default=0.0, metavar="LAMBDA",
                   help="sparsity penalty: adds LAMBDA times the Hoyer measure ||f||_1 / (||f||_2 sqrt(n)) of "
                        "each sample's features f (n values; every non-last stage, mean over the batch) to the "
                        "joint loss. Scale-free, so it lowers only by zeroing values: the features sent between "
                        "tiers become mostly exact zeros and u8q+deflate frames shrink (0: off; "
                        "the shipped models use 1.5, deep3 2)")
    t.add_argument("--augment", action="store_true", help="random horizontal flips and 2-pixel shifts while training")
    t.add_argument("--seed", type=int, default=0, help="seeds torch, numpy and the data order")
    t.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    t.add_argument("--train-limit", type=int, default=0,
                   help="train on the first N training samples only (0: all but the --val-size split)")
    t.add_argument("--test-limit", type=int, default=0, help="test on the first N test samples only (0: all)")
    t.add_argument("--val-size", type=int, default=DEFAULT_VAL_SIZE, metavar="N",
                   help="validation split: the last N training images never train; the exit thresholds are "
                        "calibrated on them, never on the test set, which only measures the reported table "
                        "(--train-limit counts from the start of the images left)")
    t.add_argument("--target-drop", type=float, default=0.5,
                   help="each exit gets the largest threshold whose Overall accuracy stays within this many "
                        "percentage points of the last stage alone")
    t.add_argument("--views", type=int, default=1, metavar="K",
                   help=f"1: one device sees the image; 2..{MAX_VIEWS}: a multi-view (horizontal) DDNN on the "
                        "multi-view data set (trainer/views_data.py): K device stages with their own weights, each "
                        "on its own view of the item, a local aggregator of their exit logits (the first exit), a "
                        "feature aggregator feeding the next stage; the bundle gets a views block "
                        "(docs/bundle-views.md)")
    t.add_argument("--local-agg", choices=LOCAL_AGGS, default="max",
                   help="with --views: how the local aggregator merges the devices' exit logits (elementwise "
                        "max or mean over the views present)")
    t.add_argument("--feature-agg", choices=FEATURE_AGGS, default="max",
                   help="with --views: how the devices' features become the next stage's input: concat (channels, "
                        "view order, zeros for a missing view), or elementwise max or mean over the views present")
    t.add_argument("--view-dropout", type=float, default=DEFAULT_VIEW_DROPOUT, metavar="P",
                   help="with --views: in training each view of each sample is dropped with probability P (a "
                        "sample keeps at least one), so the aggregate tolerates missing views")
    t.add_argument("--view-seed", type=int, default=0,
                   help="with --views: seed of the multi-view data set (crops, occlusions, noise)")
    t.add_argument("--out", required=True, help="bundle directory to write")
    t.add_argument("--name", default=None, help="bundle name in ddnn.json (default: the --out directory's name)")
    t.add_argument("--version", default="1.0.0", help="bundle version in ddnn.json")
    t.add_argument("--opset", type=int, default=DEFAULT_OPSET, choices=range(13, 18), metavar="13..17",
                   help="ONNX opset")

    e = sub.add_parser("evaluate", formatter_class=fmt, help="accuracy table of a bundle on idx images",
                       description="Rebuilds the PyTorch model from the bundle's checkpoint.pt, preprocesses with "
                                   "the manifest's input block, runs every stage on every sample and applies the "
                                   "exit rule (eta < threshold) with the manifest's thresholds.")
    e.add_argument("--bundle", required=True, help="bundle directory (ddnn.json + checkpoint.pt)")
    e.add_argument("--images", required=True, help="idx file of u8 images, [N, *input.shape] or the same number "
                                                   "of values per sample (gzipped or not)")
    e.add_argument("--labels", required=True, help="idx file of u8 labels [N]")
    e.add_argument("--limit", type=int, default=None, help="use the first N samples only")
    e.add_argument("--threshold", action="append", metavar="STAGE=VALUE",
                   help="override a stage's exit threshold (repeatable), e.g. --threshold device=0.3")
    e.add_argument("--json", action="store_true",
                   help='print {"samples","stages":[{"name","exitRate","accuracyAll","accuracyExited"}],'
                        '"overall","ideal"} instead of the table')
    e.add_argument("--predictions", default=None, metavar="FILE",
                   help="write per-sample JSON {exitStage, label, stageLabels, stageEntropy} to FILE")
    e.add_argument("--sweep", action="store_true",
                   help="also print the threshold sweep on these samples and the thresholds it suggests (stderr)")
    e.add_argument("--target-drop", type=float, default=0.5, help="accuracy budget of --sweep, in percentage points")
    e.add_argument("--threads", type=int, default=1, help=THREADS_HELP)

    v = sub.add_parser("evaluate-views", formatter_class=fmt, help="Table II of a multi-view bundle, views missing",
                       description="Rebuilds a multi-view model (train --views K) from the bundle's checkpoint.pt "
                                   "and prints its accuracy table at the manifest's thresholds: the exits with every "
                                   "view present, each device alone, and every set of views with 1, 2, ... views "
                                   "missing. The views come from --images (one idx file per view, in view order) "
                                   "and --labels, or are made from --dataset as training made them.")
    v.add_argument("--bundle", required=True, help="multi-view bundle directory (ddnn.json with views + checkpoint.pt)")
    v.add_argument("--images", action="append", metavar="IDX",
                   help="idx file of u8 images of one view; give it once per view, view 0 first")
    v.add_argument("--labels", default=None, help="idx file of u8 labels [N] (with --images)")
    v.add_argument("--dataset", choices=DATASETS, default="fashion-mnist",
                   help="without --images: make the views of this data set's items (the bundle's view seed)")
    v.add_argument("--data-dir", default=None, help=f"where the data set lives (default {DEFAULT_FASHION_DIR})")
    v.add_argument("--split", choices=("test", "train"), default="test", help="without --images: which split")
    v.add_argument("--limit", type=int, default=None, help="use the first N samples only")
    v.add_argument("--threshold", action="append", metavar="STAGE=VALUE",
                   help="override an exit's threshold (repeatable); the first stage's is the local aggregator's")
    v.add_argument("--json", action="store_true",
                   help='print {"samples","views","localAggregation","featureAggregation","all","single","missing",'
                        '"bestSingleView","bestSingleOverall","gain"}; "all" and every row of "single" and '
                        '"missing"[].subsets are evaluate --json tables plus "present" (the views present)')
    v.add_argument("--predictions", default=None, metavar="FILE",
                   help="write per-sample JSON {exitStage, label, stageLabels, stageEntropy} to FILE (the exits: "
                        "the local aggregate, then each later stage), with the views of --present")
    v.add_argument("--present", default=None, metavar="V,V,...",
                   help="the views present for --predictions, e.g. 0,2 (default: every view)")
    v.add_argument("--threads", type=int, default=1, help=THREADS_HELP)

    s = sub.add_parser("synth", formatter_class=fmt, help="random-weight bundle of any shape (runtime cross-checks)",
                       description="Builds a small random-weight DDNN and exports it as a bundle with a checkpoint, "
                                   "so `evaluate` works on it. Each exit's threshold is the median eta of that exit "
                                   "over the calibration images, so about half the samples leave at each exit.")
    s.add_argument("--out", required=True, help="bundle directory to write")
    s.add_argument("--stages", type=int, default=2, help="number of stages, 1..4")
    s.add_argument("--stage-names", default=None, help="comma-separated stage names (default stage0,stage1,...)")
    s.add_argument("--tensor-names", default="image,features,logits",
                   help="input,features,logits tensor names; stage k>0 names its features <stage>_<features>")
    s.add_argument("--input-shape", default="1,28,28",
                   help="per-sample shape, channels first: C,H,W gets convs, other ranks an MLP")
    s.add_argument("--mean", default="0", help="comma-separated per-channel mean (1 or C values)")
    s.add_argument("--std", default="1", help="comma-separated per-channel std (1 or C values)")
    s.add_argument("--scale", type=float, default=1.0 / 255.0, help="input.scale: x = (u8 * scale - mean) / std")
    s.add_argument("--classes", type=int, default=10, help="number of labels (>= 2)")
    s.add_argument("--seed", type=int, default=0, help="seeds the weights and the random calibration images")
    s.add_argument("--calibrate-images", default=None,
                   help="idx images for the median-eta thresholds (default: 256 random u8 images)")
    s.add_argument("--name", default=None, help="bundle name (default: the --out directory's name)")
    s.add_argument("--version", default="0.0.0", help="bundle version")
    s.add_argument("--threads", type=int, default=1, help=THREADS_HELP)

    i = sub.add_parser("synth-images", formatter_class=fmt, help="random u8 idx images and labels",
                       description="Writes random u8 images [count, *shape] and random labels as idx files "
                                   "(gzipped with mtime 0 when the name ends in .gz).")
    i.add_argument("--out-images", required=True, help="idx file for the images")
    i.add_argument("--out-labels", required=True, help="idx file for the labels")
    i.add_argument("--shape", default="1,28,28", help="per-sample shape, e.g. 3,32,32")
    i.add_argument("--count", type=int, default=100, help="number of samples")
    i.add_argument("--classes", type=int, default=10, help="labels are drawn from 0..classes-1")
    i.add_argument("--seed", type=int, default=0, help="random seed")

    m = sub.add_parser("sample", formatter_class=fmt, help="first N samples of a split as gzipped idx files",
                       description="Writes <out>/<dataset>-<t10k|train|test>-<count>-{images-idxD,labels-idx1}"
                                   "-ubyte.gz with reproducible bytes (gzip mtime 0).")
    m.add_argument("--dataset", choices=DATASETS, default="fashion-mnist", help="data set")
    m.add_argument("--data-dir", default=None, help=f"where the data set lives (default {DEFAULT_FASHION_DIR})")
    m.add_argument("--split", choices=("test", "train"), default="test", help="which split to sample")
    m.add_argument("--count", type=int, default=2000, help="how many samples, from the start of the split")
    m.add_argument("--out", required=True, help="output directory")
    m.add_argument("--views", type=int, default=1, metavar="K",
                   help=f"2..{MAX_VIEWS}: write the K views of each item (trainer/views_data.py), one idx file per "
                        "view, <dataset>-views<K>-<tag>-<count>-view<v>-images-idx3-ubyte.gz, and the labels")
    m.add_argument("--view-seed", type=int, default=0, help="with --views: seed of the multi-view data set")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train" and args.views != 1:
            from .views_train import main as run
        elif args.command == "train":
            from .train import main as run
        elif args.command == "evaluate":
            from .evaluate import main as run
        elif args.command == "evaluate-views":
            from .views_evaluate import main as run
        elif args.command == "synth":
            from .synth import main as run
        elif args.command == "synth-images":
            from .synth import images_main as run
        else:
            from .data import write_sample

            from .views_data import write_views_sample

            def run(a: argparse.Namespace) -> int:
                if a.views != 1:
                    paths = write_views_sample(a.dataset, a.split, a.count, a.out, a.data_dir, a.views, a.view_seed)
                else:
                    paths = list(write_sample(a.dataset, a.split, a.count, a.out, a.data_dir))
                for path in paths:
                    print(f"wrote {path}")
                return 0
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
