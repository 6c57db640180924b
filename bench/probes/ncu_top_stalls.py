"""The SASS lines where warps were sampled most, from `ncu --page source --csv --print-source sass` output.

    python3 bench/probes/ncu_top_stalls.py SASS_CSV [TOP] [COLUMN]

Prints the header's sampling columns once, then the TOP lines (default 40) by all samples, each with its share. With
COLUMN (the start of a column's name, e.g. "L1 Wavefronts Shared Excessive"), ranks by that column instead and prints,
for each line, every column whose name starts "L1 Wavefronts Shared" (the lines' shared-memory wavefronts)."""
import csv
import sys


def main() -> None:
    rows = list(csv.reader(open(sys.argv[1], newline="")))
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    start = next(i for i, r in enumerate(rows) if any("Source" == c.strip() for c in r))
    header, body = rows[start], rows[start + 1:]
    src = header.index("Source")
    samples = next(i for i, c in enumerate(header) if c.startswith("Warp Stall Sampling (All"))
    by = sys.argv[3] if len(sys.argv) > 3 else None
    if by:
        samples = next(i for i, c in enumerate(header) if c.startswith(by))
        shown = [i for i, c in enumerate(header) if c.startswith("L1 Wavefronts Shared")]
        print("columns:", [header[i] for i in shown])
    else:
        shown = []
        print("columns:", [c for c in header if "Stall" in c or "stall" in c][:40])

    def num(s: str) -> float:
        try:
            return float(s.replace(",", ""))
        except ValueError:
            return 0.0
    total = sum(num(r[samples]) for r in body if len(r) > samples) or 1.0
    ranked = sorted((r for r in body if len(r) > samples), key=lambda r: -num(r[samples]))
    print(f"total samples {total:.0f}")
    for r in ranked[:top]:
        extra = "  ".join(r[i] for i in shown)
        print(f"{100 * num(r[samples]) / total:5.1f}%  {r[0]:>6s}  {r[src][:110]}" + (f"  [{extra}]" if extra else ""))


if __name__ == "__main__":
    main()
