"""Prints the dependencies declared in pyproject.toml, one per line (used by setup_env.sh).

python scripts/_read_requirements.py pyproject.toml [--extra NAME ...] [--exclude PKG ...] [--only PKG ...]
"""

import argparse
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pyproject")
    parser.add_argument("--extra", nargs="*", default=[])
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = list(project.get("dependencies", []))
    for extra in args.extra:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    excluded = {name.lower() for name in args.exclude}
    only = None if args.only is None else {name.lower() for name in args.only}
    for requirement in requirements:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
        if name not in excluded and (only is None or name in only):
            print(requirement)


if __name__ == "__main__":
    main()
