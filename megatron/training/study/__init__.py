"""The data-efficiency study: baseline / CL / random-LTD / CL + random-LTD at several shares of a
token budget, their held-out losses against tokens, FLOPs and wall-clock, and the report.

- `grid`: the study's options (`StudyConfig`), model presets and the command line of every run;
- `runner`: data preparation, the shared analysis, restartable runs;
- `runlog`: reading a run's metrics (JSON lines, text logs, TensorBoard event files);
- `report`: the table (final losses, savings at equal quality, spread over seeds);
- `plots`: the PNG figures (matplotlib, an optional extra).

`tools/data_efficiency_study.py` and `tools/plot_runs.py` are the command lines.
"""
