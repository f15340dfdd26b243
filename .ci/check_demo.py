"""Checks `make run`'s output as a newcomer reads it: it ends with the quality table and the outputs
line, raeae's PSNR is above TV's and NL-means', and it stays short."""

import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()
lines = text.splitlines()
start = next((i for i, line in enumerate(lines) if line.startswith("== 1/4")), None)
assert start is not None, "make run printed no '== 1/4' step"
after_setup = lines[start:]
assert len(after_setup) <= 90, f"make run printed {len(after_setup)} lines after set-up (limit ~80)"
assert after_setup[-1].startswith("Parquet: "), f"last line is not the outputs line: {after_setup[-1]!r}"
psnr = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^\| ([^|]+) \| ([0-9.]+) \|", text, re.M)}
for rival in ("TV (Chambolle)", "NL-means"):
    assert psnr["raeae"] > psnr[rival], f"raeae {psnr['raeae']} dB is not above {rival} {psnr[rival]} dB"
print(f"make run: ok ({len(after_setup)} lines; raeae {psnr['raeae']:.2f} dB, TV {psnr['TV (Chambolle)']:.2f}, "
      f"NL-means {psnr['NL-means']:.2f})")
