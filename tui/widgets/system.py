"""GPU (NVML) and CPU/RAM/disk (psutil) telemetry, or why there is no GPU; per GPU, which run (and PID) holds it."""
from __future__ import annotations

from typing import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from daemon.core.render import fmt_bytes
from tui.homedata import RunRow
from tui.gpuprocs import GpuUse, map_gpu_processes
from tui.telemetry import GpuStat, Telemetry


def meter(fraction: float | None, width: int = 10) -> Text:
    """`[█████░░░░░]`-style gauge, coloured by how full it is."""
    if fraction is None:
        return Text("-".center(width))
    fraction = max(0.0, min(1.0, fraction))
    full = int(round(fraction * width))
    style = "red" if fraction > 0.9 else "yellow" if fraction > 0.7 else "green"
    return Text.assemble(("█" * full, style), ("░" * (width - full), "dim"))


def _pct(used: float, total: float) -> float | None:
    return used / total if total else None


def _gpu_row(gpu: GpuStat) -> list:
    util = None if gpu.util_percent is None else gpu.util_percent / 100
    temp = "-" if gpu.temperature_c is None else f"{gpu.temperature_c:.0f}°C"
    power = "-" if gpu.power_w is None else f"{gpu.power_w:.0f}" + (f"/{gpu.power_limit_w:.0f}W" if gpu.power_limit_w
                                                                      else "W")
    return [f"GPU{gpu.index}", Text(gpu.name, "bold", overflow="ellipsis", no_wrap=True),
            Text.assemble(meter(util, 8), " -" if util is None else f" {gpu.util_percent:3.0f}%"),
            Text.assemble(meter(_pct(gpu.mem_used, gpu.mem_total), 8),
                          f" {fmt_bytes(gpu.mem_used)}/{fmt_bytes(gpu.mem_total)}"),
            temp, power]


def holders_table(uses: Sequence[GpuUse], width: int = 80) -> Table:
    """Per GPU, the processes on it: the run each belongs to (or its name, `not overnight`), PID, memory."""
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False,
                  header_style="dim")
    table.add_column("", no_wrap=True)
    table.add_column("on the GPU", no_wrap=True, overflow="ellipsis", max_width=max(12, width - 4 - 10 - 7 - 3))
    table.add_column("PID", no_wrap=True, justify="right")
    table.add_column("memory", no_wrap=True, justify="right")
    for use in uses:
        rows: list[list] = [[Text(h.label(), "bold" if h.run_id else "yellow"), str(h.pid),
                             "-" if h.used_memory is None else fmt_bytes(h.used_memory)] for h in use.holders]
        rows += [[Text(f"{run_id} (starting)", "bold"), "", ""] for run_id in use.waiting]
        for i, row in enumerate(rows or [[Text("free", "dim"), "", ""]]):
            table.add_row(f"GPU{use.index}" if i == 0 else "", *row)
    return table


def render_telemetry(t: Telemetry | None, width: int = 80, runs: Sequence[RunRow] = ()) -> Group:
    """The System panel's content for one sample, fitted to `width` cells (the GPU name gives way first); `runs`
    (the home's) name the processes on each GPU."""
    if t is None:
        return Group(Text("sampling…", "dim"))
    parts: list = []
    healthy = [gpu for gpu in t.gpus if not gpu.error]
    if healthy:
        gpus = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False,
                     header_style="dim")
        fixed = 4 + 13 + 20 + 5 + 10 + 5  # GPU#, util, memory, temp, power and the gaps between columns
        for label in ("", "name", "util", "memory", "temp", "power"):
            gpus.add_column(label, no_wrap=True, overflow="ellipsis",
                            max_width=max(6, width - fixed) if label == "name" else None)
        for gpu in healthy:
            gpus.add_row(*_gpu_row(gpu))
        parts.append(gpus)
        parts.append(holders_table(map_gpu_processes(healthy, t.procs_by_gpu(), runs, t.parent_of, t.name_of),
                                   width))
    # a GPU NVML cannot report gets a full-width line of its own, so its reason is not cut to the name column
    parts += [Text(f"GPU{gpu.index} {gpu.error}", "bold yellow") for gpu in t.gpus if gpu.error]
    if not t.gpus:
        parts.append(Text(t.gpu_error or "no NVIDIA GPU", "bold yellow"))
    s = t.system
    if s is not None:
        grid = Table.grid(padding=(0, 1))
        load = "" if s.load_1m is None else f", load {s.load_1m:.2f}"
        grid.add_row("CPU", Text.assemble(meter(s.cpu_percent / 100), f" {s.cpu_percent:.0f}% of {s.cpu_count} "
                                                                       f"cores{load}"))
        grid.add_row("RAM", Text.assemble(meter(_pct(s.ram_used, s.ram_total)),
                                          f" {fmt_bytes(s.ram_used)}/{fmt_bytes(s.ram_total)}"))
        grid.add_row("disk", Text.assemble(meter(_pct(s.disk_used, s.disk_total)),
                                           f" {fmt_bytes(s.disk_used)}/{fmt_bytes(s.disk_total)} ({s.disk_path})"))
        parts.append(grid)
    return Group(*parts)


class SystemPanel(Static):
    """Redrawn from frozen Telemetry samples (a worker thread samples at most once a second) and the home's runs."""

    DEFAULT_CSS = """
    SystemPanel { height: auto; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.telemetry: Telemetry | None = None
        self.runs: tuple[RunRow, ...] = ()

    def on_mount(self) -> None:
        self.update(render_telemetry(None))

    def on_resize(self) -> None:
        if self.telemetry is not None:
            self.update(render_telemetry(self.telemetry, self.size.width, self.runs))

    def show(self, telemetry: Telemetry) -> None:
        """Show a sample (a no-op when it equals the one shown)."""
        if telemetry == self.telemetry:
            return
        self.telemetry = telemetry
        self.update(render_telemetry(telemetry, self.size.width or 80, self.runs))

    def show_runs(self, runs: tuple[RunRow, ...]) -> None:
        """The home's runs changed: the processes on the GPUs are matched to them again."""
        active = tuple(r for r in runs if r.active)
        if [(r.id, r.state, r.pid, r.gpu_set) for r in active] == [(r.id, r.state, r.pid, r.gpu_set) for r in self.runs]:
            return  # a new step or loss changes nothing here
        self.runs = active
        if self.telemetry is not None and self.telemetry.gpus:
            self.update(render_telemetry(self.telemetry, self.size.width or 80, self.runs))
