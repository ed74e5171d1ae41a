"""PAR — Parallelized Autoregressive Visual Generation (Wang et al., arXiv 2412.15119).

Module map (paper section ↔ file):
  order.py     §3.2  token orders (raster, PAR regions, ablations, video) and step schedules
  model.py     §3.3  LlamaGen GPT + PAR transition tokens, group mask, 2D/3D RoPE
  generate.py  Fig. 4 KV-cached parallel decoding with CFG
  tokenizer.py       LlamaGen VQ-16 tokenizer
  entropy.py   §8    conditional-entropy analysis
"""

__version__ = "0.1.0"
