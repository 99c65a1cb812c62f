"""``python -m ltdet2.data.lt_shapes --out DIR --seed N [--num-train K --num-val K --image-size S] [--force]``"""

import argparse
import json
import logging

from .build import dataset_paths, generate, is_complete
from .spec import LTShapesSpec

logger = logging.getLogger("ltdet2.data.lt_shapes")


def main(argv=None) -> dict:
    """Generate LT-Shapes into ``--out`` (unless already complete there); prints and returns its paths."""
    parser = argparse.ArgumentParser(
        prog="python -m ltdet2.data.lt_shapes",
        description="Generate the LT-Shapes long-tailed dataset (LVIS json format).",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-val", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete copy exists")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (("num_train", args.num_train), ("num_val", args.num_val), ("image_size", args.image_size))
        if v is not None
    }
    spec = LTShapesSpec(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not args.force and is_complete(args.out, args.seed, spec):
        logger.info("%s already holds LT-Shapes for seed %d and this spec (use --force to redo)", args.out, args.seed)
        paths = dataset_paths(args.out)
    else:
        paths = generate(args.out, args.seed, spec)
    print(json.dumps(paths, indent=1))
    return paths


if __name__ == "__main__":
    main()
