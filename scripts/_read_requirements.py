"""Prints requirements one per line (used by setup_env.sh).

python scripts/_read_requirements.py pyproject.toml [--extra NAME ...] [--exclude PKG ...] [--only PKG ...]
    the dependencies declared in pyproject.toml (and those of the named extras)
python scripts/_read_requirements.py constraints.txt [--exclude PKG ...] [--only PKG ...]
    the pins of a pip requirements / constraints file (comments and blank lines dropped)
"""

import argparse
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _name(requirement):
    name = re.split(r"[<>=!~\[; @]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: Foo_Bar, foo.bar and foo-bar are one name


def _from_pyproject(path, extras):
    with open(path, "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    return requirements


def _from_requirements_file(path):
    with open(path) as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("file", help="pyproject.toml, or a pip requirements / constraints file")
    parser.add_argument("--extra", nargs="*", default=[])
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    if args.file.endswith(".toml"):
        requirements = _from_pyproject(args.file, args.extra)
    elif args.extra:
        parser.error("--extra applies to pyproject.toml only")
    else:
        requirements = _from_requirements_file(args.file)
    excluded = {_name(name) for name in args.exclude}
    only = None if args.only is None else {_name(name) for name in args.only}
    for requirement in requirements:
        name = _name(requirement)
        if name not in excluded and (only is None or name in only):
            print(requirement)


if __name__ == "__main__":
    main()
