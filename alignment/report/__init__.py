"""The comparison report: per-arm table (mean and 95% CI over seeds), paired comparisons (alignment.statistics:
per-prompt differences with bootstrap intervals over prompts and seeds, exact tests for a binary gold reward, Holm's
correction across the report's comparisons), gold at equal KL, Gao et al. (2022)'s over-optimisation fits, plots,
a summary computed from them, and what reproduces it.

Plots are PNG files that carry the numbers they draw in a `series` text chunk (JSON), so that a test, or a reader
with `PIL.Image.open(path).text["series"]`, gets back exactly what is on the figure:
- frontier.png: gold score vs KL to the SFT policy, one curve per arm (the DPO paper's Figure 2);
- overoptimisation.png: proxy-RM score and gold score vs KL, side by side, with Gao et al. (2022)'s fitted curves
  and the fitted gold peak where there is one: a proxy that keeps rising while the gold score falls is
  over-optimised;
- training_curves.png: training loss (and the RL arms' reward) per step, mean over seeds.

The package, by part:
- `alignment.report.tables`: the per-arm rows (mean and CI over seeds) and the arms table;
- `alignment.report.summary`: the plain-words summary computed from the rows and the paired statistics;
- `alignment.report.plots`: the three figures;
- `alignment.report.sections`: report.md's sections on the paired statistics and how to reproduce it;
- `alignment.report.writer`: `write`, which puts report.md, compare.json and the plots together.
"""

from __future__ import annotations

from alignment.report.plots import REWARD_KEYS, plot_frontier, plot_overoptimisation, plot_training_curves
from alignment.report.sections import reproduce_section, statistics_sections
from alignment.report.summary import OPTIMISERS, summary_lines
from alignment.report.tables import (
    COLUMNS,
    FIGURES,
    T_95,
    aggregate,
    markdown_table,
    rich_table,
    seed_interval,
)
from alignment.report.writer import write

__all__ = [
    "COLUMNS",
    "FIGURES",
    "OPTIMISERS",
    "REWARD_KEYS",
    "T_95",
    "aggregate",
    "markdown_table",
    "plot_frontier",
    "plot_overoptimisation",
    "plot_training_curves",
    "reproduce_section",
    "rich_table",
    "seed_interval",
    "statistics_sections",
    "summary_lines",
    "write",
]
