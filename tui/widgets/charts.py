"""Loss (train, eval and the runs being compared) and learning-rate curves (a preference run: its reward margin and
accuracy instead), downsampled to the plot's width."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual_plotext import PlotextPlot

from tui.homedata import ChartData, Series

OVERLAY_COLORS = ("magenta", "cyan", "yellow", "green", "red", "white")


class ChartsPanel(Horizontal):
    """Two plots side by side: loss and eval loss (+ overlays), learning rate (or reward margin and accuracy)."""

    DEFAULT_CSS = """
    ChartsPanel { height: 1fr; }
    ChartsPanel PlotextPlot { width: 1fr; height: 1fr; }
    """

    class Resized(Message):
        """The plots changed size (e.g. the tab was first shown): the curves' resolution should follow."""

    def on_resize(self) -> None:
        self.post_message(self.Resized())

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown: tuple[ChartData, tuple[Series, ...]] | None = None
        self.loss_plot, self.lr_plot = PlotextPlot(id="loss-plot"), PlotextPlot(id="lr-plot")

    def compose(self) -> ComposeResult:
        yield self.loss_plot
        yield self.lr_plot

    @property
    def buckets(self) -> int:
        """Points per curve worth drawing: about two per cell of the widest plot (braille dots)."""
        width = max(self.loss_plot.size.width, self.lr_plot.size.width)
        return max(40, min(400, 2 * width))

    def show(self, charts: ChartData, compare: tuple[Series, ...] = ()) -> None:
        """Redraw both plots (a no-op when the curves did not change)."""
        if self._shown == (charts, compare):
            return
        self._shown = (charts, compare)
        loss_plot = self.loss_plot
        plt = loss_plot.plt
        plt.clear_data()
        plt.clear_figure()
        drawn = False
        for series, color in zip(compare, OVERLAY_COLORS):
            if series.xs:
                plt.plot(series.xs, series.ys, label=series.label, color=color, marker="braille")
                drawn = True
        for series, color in ((charts.loss, "blue"), (charts.eval_loss, "orange")):
            if series.xs:
                plt.plot(series.xs, series.ys, label=series.label, color=color,
                         marker="braille" if len(series.xs) > 1 else "dot")
                drawn = True
        plt.title(f"loss ({charts.points:,} records)" if drawn else "loss: no metrics yet")
        plt.xlabel("step")
        loss_plot.refresh()

        lr_plot = self.lr_plot
        plt = lr_plot.plt
        plt.clear_data()
        plt.clear_figure()
        if charts.preference:  # what a preference run learns: how far it prefers the chosen answers, how often
            for series, color in ((charts.margin, "green"), (charts.accuracy, "cyan")):
                if series.xs:
                    plt.plot(series.xs, series.ys, label=series.label, color=color, marker="braille")
            plt.title("reward margin and accuracy (chosen over rejected)")
        else:
            if charts.lr.xs:
                plt.plot(charts.lr.xs, charts.lr.ys, color="green", marker="braille")
            plt.title("learning rate" if charts.lr.xs else "learning rate: no metrics yet")
        plt.xlabel("step")
        lr_plot.refresh()
