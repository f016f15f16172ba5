"""`bench data build`: the data folders `bench run` reads, built from their sources.

- `vtab1k`: the 19 VTAB-1k tasks from TensorFlow Datasets, split and labelled as VTAB's
  task_adaptation code does (`bench.databuild.vtab1k`, one declarative row per task);
- `fgvc`: the five FGVC datasets from their official archives and VPT's json splits
  (`bench.databuild.fgvc`);
- `manifest`: each built task's `manifest.csv` (split, index, file, label, SHA-256 of the
  decoded pixels) and the pixel-exact comparison of a tree against one;
- `staging`: how a task is written (into a staging folder, images written then renamed, the
  finished folder renamed into place), so an interrupted build resumes and `bench run` never
  reads half a task.

TensorFlow and TFDS are an optional extra (`pip install -e ".[data]"`), imported only by the
VTAB-1k build, never by `bench run`.
"""
