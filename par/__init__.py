"""PAR — Parallelized Autoregressive Visual Generation (Wang et al., arXiv 2412.15119).

Packages by DAG stage (workflow/rules/<stage>.smk → par/<package>/), paper section ↔ file:
  config.py                 every setting, defined once (torch-free)
  core/order.py      §3.2   token orders (raster, PAR regions, ablations, video) and step schedules
  core/model.py      §3.3   LlamaGen GPT + PAR transition tokens, group mask, 2D/3D RoPE
  core/generate.py   Fig. 4 KV-cached parallel decoding with CFG
  data/              §4     tiny set, VQ-16 tokenizer, ten-crop token shards      (data.smk)
  train/             §4     the training loop and its launch                       (train.smk)
  eval/              §5     sampling, FID/IS/precision/recall, benchmarks          (sample.smk, evaluate.smk)
  analysis/          §8     conditional-entropy analysis, tables, report           (entropy.smk, report.smk)
  cli.py                    `par`: on top; nothing in the package imports it
"""

__version__ = "0.1.0"
