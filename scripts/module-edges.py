#!/usr/bin/env python3
"""Lists the `use crate::…` edges between entitled's top-level modules and checks that they
all point down the layer order below (a module may import only modules on lower layers).

Usage: scripts/module-edges.py [--check]   (run from the repository root)
Prints `from -> to (n)` lines; with --check, exits 1 when an edge points up or sideways.
"""
import os
import re
import sys

# Top to bottom. A module may import only modules listed after its own layer.
LAYERS = [
    ["main"],
    ["cli"],
    ["app"],
    ["console"],
    ["api"],
    ["jobs"],
    ["stripe", "ingest", "insights", "seed", "datastream"],
    ["outbound"],
    ["outbox", "changes"],
    ["cache"],
    ["store"],
    ["engine"],
    ["config", "ids", "metrics", "group"],
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def module_of(path):
    rel = os.path.relpath(path, "src")
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def crate_refs(text):
    """Top-level modules named by `crate::x` paths and `use crate::{x, y::z}` groups."""
    refs = []
    for m in re.finditer(r"crate::\{", text):
        depth, i, start = 1, m.end(), m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        inner, depth, part = text[start : i - 1], 0, ""
        parts = []
        for ch in inner:
            if ch == "," and depth == 0:
                parts.append(part)
                part = ""
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            part += ch
        parts.append(part)
        refs += [p.strip().split("::")[0].split(" ")[0] for p in parts if p.strip()]
    refs += re.findall(r"crate::([a-z_][a-z0-9_]*)\b", text)
    return [r for r in refs if r and r != "self"]


def main():
    edges = {}
    for root, _, files in os.walk("src"):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            src = module_of(path)
            with open(path, encoding="utf-8") as fh:
                text = strip_comments(fh.read())
            for dst in crate_refs(text):
                if dst != src:
                    edges[(src, dst)] = edges.get((src, dst), 0) + 1
    bad = []
    for (src, dst), n in sorted(edges.items(), key=lambda e: (LAYER.get(e[0][0], 99), e[0])):
        ok = LAYER.get(src, -1) < LAYER.get(dst, -1)
        print(f"{src} -> {dst} ({n}){'' if ok else '   <-- points up or sideways'}")
        if not ok:
            bad.append((src, dst))
    if "--check" in sys.argv and bad:
        print(f"{len(bad)} edge(s) break the layer order in scripts/module-edges.py", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
