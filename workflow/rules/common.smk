# Preset resolution and per-rule argument strings (kept out of the rules so they stay one line).
import shlex

P = config["preset"]
if P not in config["presets"]:
    raise ValueError(f"config.yaml: preset {P!r} is not defined under `presets` ({sorted(config['presets'])})")
C = config["presets"][P]
R = f"{config['results']}/{P}"
A = config["analysis"]
MODELS = sorted(C["models"])

# Fields of a model entry that go to `par train` / `par sample`; the rest are structural.
TRAIN_KEYS = {"size", "order", "n", "initial_sequential", "group_attention", "regions", "global_batch", "lr",
              "epochs", "max_steps", "schedule", "warmup_epochs", "dropout", "class_dropout", "ckpt_every",
              "log_every", "seed", "ema", "ema_decay"}
SAMPLE_KEYS = {"num_samples", "shard_size", "batch_size", "cfg_scale", "cfg_interval", "temperature", "top_k",
               "top_p", "seed", "image_size", "compile", "weights"}


def flags(d):
    return " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in sorted(d.items()))


def res(stage):
    """Resources of a stage: the preset's `resources.<stage>` over `resources.default`."""
    r = {**C["resources"]["default"], **C["resources"].get(stage, {})}
    out = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "cpus_per_task": r["cpus"]}
    if r.get("gpus"):
        out["gpu"] = r["gpus"]
    for k in ("partition", "constraint", "account", "qos"):
        if r.get(k):
            out["slurm_" + k if k in ("partition", "account") else k] = r[k]
    return out


def released(model):
    return C["models"][model].get("checkpoint")


def train_flags(wc):
    m = C["models"][wc.model]
    d = {**{k: v for k, v in C["train"].items() if k in TRAIN_KEYS}, **{k: v for k, v in m.items() if k in TRAIN_KEYS}}
    r = {**C["resources"]["default"], **C["resources"].get(m.get("resources", "train"), {})}
    cluster = {"nodes": r.get("nodes", 1), "gpus_per_node": r.get("gpus", 0), "cpus_per_task": r["cpus"],
               "time_min": r["runtime"], "mem_gb": r["mem_mb"] // 1000}
    for k in ("partition", "account", "qos", "constraint"):
        if r.get(k):
            cluster[k] = r[k]
    return flags(d) + " " + flags(cluster) + f" --launcher {C['train'].get('launcher', 'auto')}"


def sample_flags(wc):
    m = C["models"][wc.model]
    d = {**{k: v for k, v in C["sample"].items() if k in SAMPLE_KEYS}, **{k: v for k, v in m.items() if k in SAMPLE_KEYS}}
    if released(wc.model):  # a released file carries no config
        d.update(size=m["size"], order=m["order"], n=m["n"])
    return flags(d)


def model_path(model):
    return released(model) or f"{R}/models/{model}/model.pt"


def model_file(wc):
    return model_path(wc.model)


def vq_file(wc=None):
    t = C["tokenizer"]
    return t.get("checkpoint") or (f"{R}/downloads/{t['url'].rsplit('/', 1)[-1]}" if t.get("url") else f"{R}/vq/vq.pt")


def reference_stats():
    d = C["data"]
    if d.get("reference_stats_url"):
        return f"{R}/downloads/{d['reference_stats_url'].rsplit('/', 1)[-1]}"
    return d.get("reference_stats")


def download_source(wc):
    """(url, sha256) of a released file named `wc.file` in the preset."""
    for url, sha in ((C["tokenizer"].get("url"), C["tokenizer"].get("sha256", "")),
                     (C["data"].get("reference_stats_url"), C["data"].get("reference_stats_sha256", ""))):
        if url and url.rsplit("/", 1)[-1] == wc.file:
            return url, sha
    raise ValueError(f"no download configured for {wc.file}")
