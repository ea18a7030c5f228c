#!/usr/bin/env python3
"""Chooses a corpus within a size budget from a libFuzzer merge control file.

    fuzz/pick-corpus.py CONTROL_FILE BUDGET_KIB OUT_DIR    (from fuzz/)

Greedy weighted set cover: repeatedly takes the input with the most coverage
features not yet covered per byte, skipping inputs that would exceed the
budget. Paths in the control file are relative to where the merge ran.
See README.md, "Keeping the corpus small".
"""
import sys, os, shutil
ctl, budget, out = sys.argv[1], int(sys.argv[2])*1024, sys.argv[3]
lines = open(ctl).read().split('\n')
n = int(lines[0]); files = lines[2:2+n]
ft = {}
for l in lines[2+n:]:
    p = l.split()
    if p and p[0] == 'FT':
        ft[int(p[1])] = set(p[2:])
sizes = {i: os.path.getsize(files[i]) for i in ft}
have = set(); total = 0; pick = []
cand = set(ft)
allf = set().union(*ft.values())
while cand:
    best = max(cand, key=lambda i: (len(ft[i] - have) / (sizes[i] + 64), -sizes[i]))
    gain = len(ft[best] - have)
    if gain == 0: break
    cand.discard(best)
    if total + sizes[best] > budget: continue
    have |= ft[best]; total += sizes[best]; pick.append(best)
shutil.rmtree(out, ignore_errors=True); os.makedirs(out)
for i in pick: shutil.copy(files[i], os.path.join(out, os.path.basename(files[i])))
print(f"{len(pick)} files, {total} bytes, {len(have)}/{len(allf)} features")
