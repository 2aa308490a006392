"""Build the example Cython extension that cimports fastloss, and check it against fastloss.

What it shows: a user extension (``fused_metrics.pyx``) that ``cimport``s fastloss's nogil
formulas (``fastloss.rows.softmax_xent_row``, ``fastloss.formulas.huber_item``) and runs them in
its own OpenMP ``prange`` loops, fused with its own work (top-1 accuracy, a mask). ``setup.py``
beside it is an ordinary setuptools + Cython build that finds fastloss's ``.pxd`` files and C
header through ``fastloss.get_include()``.

This script copies the two files into a build folder (a temporary one unless ``--build-dir`` is
given: the source folder is never written), runs ``python setup.py build_ext --inplace`` there,
imports the result and compares it with ``fastloss.softmax_xent_and_grad`` and
``fastloss.huber_and_grad`` on random data.

Run it (needs Cython, setuptools and a C compiler):

    python examples/cython_extension/run.py
    python examples/cython_extension/run.py --rows 256 --classes 10 --build-dir /tmp/fused_metrics

or build it yourself: ``cd examples/cython_extension && python setup.py build_ext --inplace``.
"""

import argparse
import importlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fastloss

HERE = Path(__file__).resolve().parent


def build(build_dir):
    """Build the extension in ``build_dir`` and import it."""
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    for name in ("fused_metrics.pyx", "setup.py"):
        shutil.copy(HERE / name, build_dir / name)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=build_dir,
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"building the extension failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    print(f"built fused_metrics in {build_dir} ({time.perf_counter() - start:.1f} s)")
    sys.path.insert(0, str(build_dir))
    return importlib.import_module("fused_metrics")


def relative_error(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--build-dir", default=None, help="default: a temporary folder, removed after")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one (printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed: {seed}")

    with tempfile.TemporaryDirectory(prefix="fused_metrics_") as tmp:
        ext = build(args.build_dir or tmp)
        rng = np.random.default_rng(seed)
        ok = True

        # cross-entropy + gradient + accuracy in one pass, against fastloss's Python API
        labels = rng.integers(0, args.classes, args.rows)
        logits = rng.standard_normal((args.rows, args.classes)) * 3
        logits[np.arange(args.rows), labels] += 9.0  # a classifier that is right most of the time
        grad = np.empty_like(logits)
        total, correct = ext.xent_and_accuracy(logits, labels, args.label_smoothing, grad)
        loss, expected = fastloss.softmax_xent_and_grad(logits, labels, reduction="sum",
                                                        label_smoothing=args.label_smoothing)
        accuracy = (logits.argmax(axis=1) == labels).mean()
        loss_err, grad_err = abs(total - loss) / abs(loss), relative_error(grad, expected)
        same = loss_err < 1e-12 and grad_err < 1e-12 and correct / args.rows == accuracy
        ok &= same
        print(f"xent_and_accuracy on {args.rows}x{args.classes} (label_smoothing={args.label_smoothing}): "
              f"loss {total:.10g} vs fastloss {loss:.10g} (relative error {loss_err:.1e}), gradient relative "
              f"error {grad_err:.1e}, accuracy {correct / args.rows:.4f} vs NumPy {accuracy:.4f}: "
              f"{'match' if same else 'MISMATCH'}")

        # Huber over the masked elements
        n = args.rows * 16
        pred, target = rng.standard_normal(n) * 2, rng.standard_normal(n)
        mask = rng.random(n) < 0.7
        grad = np.empty_like(pred)
        total = ext.masked_huber(pred, target, mask.view(np.uint8), 0.5, grad)
        loss, expected = fastloss.huber_and_grad(pred, target, reduction="sum", delta=0.5)
        expected_loss = fastloss.huber(pred[mask], target[mask], reduction="sum", delta=0.5)
        loss_err, grad_err = abs(total - expected_loss) / abs(expected_loss), relative_error(grad, expected * mask)
        same = loss_err < 1e-12 and grad_err < 1e-12
        ok &= same
        print(f"masked_huber on {n} elements ({mask.mean():.0%} masked in): loss {total:.10g} vs fastloss "
              f"{expected_loss:.10g} (relative error {loss_err:.1e}), gradient relative error {grad_err:.1e}: "
              f"{'match' if same else 'MISMATCH'}")
        sys.path.remove(str(Path(args.build_dir or tmp)))

    print("all results match fastloss" if ok else "MISMATCH: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
