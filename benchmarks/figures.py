"""Each task README's figures table and README.md's hardware table, rendered from
``benchmarks/results/figures.json``.

The JSON file is the one source of every current figure: per task, a list of runs (the default
``make train`` run first), each with its label, metrics, wall time in seconds (or null), command,
machine and date, an optional peak memory in MB (``peak_memory_mb``: the process's resident
memory on a CPU, the GPU's on a GPU; the note says which) and an optional note on the conditions.
A run on a GPU names it as its machine (``NVIDIA ...``). ``make docs`` runs this script, which
rewrites the block between the figure markers of ``tasks/<task>/README.md`` and the block between
the hardware markers of ``README.md``; a test fails when a block differs, and another when prose
outside the blocks quotes a figure they do not hold. Measurement history goes to
``benchmarks/results/history-<task>.md``.

    python benchmarks/figures.py          # rewrite every generated block
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / "results" / "figures.json"
BEGIN = "<!-- figures:begin -->"
END = "<!-- figures:end -->"
HARDWARE_BEGIN = "<!-- hardware:begin -->"
HARDWARE_END = "<!-- hardware:end -->"
MARKERS = ((BEGIN, END), (HARDWARE_BEGIN, HARDWARE_END))
GPU = "NVIDIA"
FIELDS = {"label", "metrics", "wall_s", "command", "machine", "date"}


def _refuse_constant(name: str):
    raise ValueError(f"{SOURCE}: {name} is not JSON; expected a finite number")


def load(path: Path = SOURCE) -> dict[str, list[dict]]:
    """The figures per task, checked: strict JSON and every run with the fields the table shows."""
    figures = json.loads(path.read_text(), parse_constant=_refuse_constant)
    for task, runs in figures.items():
        for run in runs:
            missing = FIELDS - set(run)
            if missing:
                raise ValueError(f"{path}: a {task} run lacks {sorted(missing)}: {run}")
    return figures


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def memory(megabytes: float | None) -> str:
    if megabytes is None:
        return "—"
    return f"{megabytes / 1000:.1f} GB" if megabytes >= 1000 else f"{megabytes:.0f} MB"


def table(runs: list[dict]) -> str:
    lines = [
        "| run | metrics | wall time | peak memory | command | machine, date |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        what = run["label"] + (f"; {run['note']}" if run.get("note") else "")
        metrics = " · ".join(f"`{key}` {value:.4f}" for key, value in run["metrics"].items()) or "—"
        command = f"`{run['command']}`" if run["command"] != "—" else "—"
        lines.append(
            f"| {what} | {metrics} | {duration(run['wall_s'])} | {memory(run.get('peak_memory_mb'))} | {command} "
            f"| {run['machine']}, {run['date']} |"
        )
    return "\n".join(lines)


def hardware(figures: dict[str, list[dict]]) -> str:
    """Per task: its default run's time on the 2-core CPU, its end-to-end times on a GPU (or that
    there is none yet), and the peak memories measured on CPUs and on GPUs."""
    lines = [
        "| task | `make train`, 2-core CPU | end to end on a GPU | peak memory, CPU | peak memory, GPU |",
        "|---|---|---|---|---|",
    ]
    for task, runs in figures.items():
        on_gpu = {True: [], False: []}
        for run in runs:
            on_gpu[run["machine"].startswith(GPU)].append(run)
        times = [
            f"{duration(r['wall_s'])}: {r['label']}, {r['machine']}" for r in on_gpu[True] if r["wall_s"] is not None
        ]
        peaks = {
            gpu: ", ".join(memory(r["peak_memory_mb"]) for r in rs if r.get("peak_memory_mb"))
            for gpu, rs in on_gpu.items()
        }
        lines.append(
            f"| [{task}](tasks/{task}/README.md#figures) | {duration(runs[0]['wall_s'])} "
            f"| {'<br>'.join(times) or 'not measured yet'} | {peaks[False] or 'not measured yet'} "
            f"| {peaks[True] or 'not measured yet'} |"
        )
    return "\n".join(lines)


def render(readme: str, content: str, begin: str = BEGIN, end: str = END) -> str:
    """``readme`` with the text between its ``begin`` and ``end`` markers replaced by ``content``."""
    block = f"{begin}\n<!-- written by `make docs` from benchmarks/results/figures.json -->\n{content}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        raise ValueError(f"no {begin} … {end} block")
    return pattern.sub(lambda _: block, readme, count=1)


def blocks(figures: dict[str, list[dict]]) -> list[tuple[Path, str, str, str]]:
    """``(file, content, begin, end)`` for every block ``make docs`` writes."""
    tables = [(ROOT / "tasks" / task / "README.md", table(runs), BEGIN, END) for task, runs in figures.items()]
    return [*tables, (ROOT / "README.md", hardware(figures), HARDWARE_BEGIN, HARDWARE_END)]


def main() -> None:
    """Rewrite every generated block; name all files that lack their markers, then fail."""
    missing = []
    for path, content, begin, end in blocks(load()):
        text = path.read_text()
        try:
            rendered = render(text, content, begin, end)
        except ValueError as error:
            missing.append(f"{path.relative_to(ROOT)}: {error}")
            continue
        if rendered != text:
            path.write_text(rendered)
    if missing:
        sys.exit("\n".join(missing))


if __name__ == "__main__":
    main()
