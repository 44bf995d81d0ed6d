#!/usr/bin/env python3
"""Keeps a corpus small: greedy set cover over libFuzzer's features.

    BIN -merge=1 -merge_control_file=CF OUT_UNUSED CORPUS SCRATCH
    python3 seeds/cap.py CF DEST [MAX_FILES=200] [MAX_BYTES=1048576]

reads the control file CF (which lists every input and the coverage
features each one hits), then copies into DEST the inputs that add the most
not-yet-covered features, best first, until MAX_FILES / MAX_BYTES, so the
committed corpus keeps as much coverage as that budget allows.
"""
import os
import shutil
import sys


def main():
    cf, dest = sys.argv[1], sys.argv[2]
    max_files = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    max_bytes = int(sys.argv[4]) if len(sys.argv) > 4 else 1 << 20
    with open(cf, errors="replace") as f:
        lines = f.read().split("\n")
    n = int(lines[0])
    files = lines[2:2 + n]
    feats = {}
    for line in lines[2 + n:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "FT":
            feats[int(parts[1])] = set(parts[2:])
    covered = set()
    chosen, total = [], 0
    candidates = dict(feats)
    while candidates and len(chosen) < max_files:
        best = max(candidates, key=lambda i: (len(candidates[i] - covered), -os.path.getsize(files[i])))
        gain = candidates.pop(best) - covered
        if not gain:
            break
        size = os.path.getsize(files[best])
        if total + size > max_bytes:
            continue
        covered |= gain
        chosen.append(best)
        total += size
    os.makedirs(dest, exist_ok=True)
    for i in chosen:
        shutil.copy(files[i], os.path.join(dest, os.path.basename(files[i])))
    print(f"{len(chosen)} files, {total} bytes, {len(covered)} of "
          f"{len(set().union(*feats.values())) if feats else 0} features")


if __name__ == "__main__":
    main()
