# Stage 1: images → VQ tokenizer → ten-crop token shards (+ the FID reference set).


rule tinyset:
    output:
        f"{R}/images/tinyset.json",
    params:
        root=f"{R}/images",
        args=flags(C["data"].get("tinyset", {})),
    resources:
        **res("data"),
    shell:
        "par make-tinyset --out {params.root} {params.args}"


rule reference_tinyset:
    output:
        f"{R}/reference_images/tinyset.json",
    params:
        root=f"{R}/reference_images",
        args=flags({**C["data"].get("tinyset", {}), "seed": C["data"].get("reference_seed", 1)}),
    resources:
        **res("data"),
    shell:
        "par make-tinyset --out {params.root} {params.args}"


def train_images(wc):
    return {"tinyset": rules.tinyset.output[0]} if C["data"]["source"] == "tinyset" else {}


def reference_images(wc):
    return {"tinyset": rules.reference_tinyset.output[0]} if C["data"]["source"] == "tinyset" else {}


rule reference:
    input:
        unpack(reference_images),
    output:
        f"{R}/reference.npz",
    params:
        root=f"{R}/reference_images",
        size=C["sample"]["image_size"],
        n=C["data"].get("reference_images", 0),
    resources:
        **res("data"),
    shell:
        "par make-reference --images {params.root} --size {params.size} --max-images {params.n} --out {output}"


rule train_vq:
    input:
        unpack(train_images),
    output:
        vq=f"{R}/vq/vq.pt",
        metrics=f"{R}/vq/vq_metrics.json",
    params:
        root=C["data"].get("images", f"{R}/images"),
        args=flags(C["tokenizer"].get("train", {})),
    threads: 2
    resources:
        **res("tokenizer"),
    shell:
        "OMP_NUM_THREADS={threads} par train-vq --images {params.root} --out {R}/vq {params.args}"


rule tokenize:
    input:
        unpack(train_images),
        vq=vq_file(),
    output:
        f"{R}/tokens/manifest.json",
    params:
        root=C["data"].get("images", f"{R}/images"),
        args=flags({k: v for k, v in C["tokenize"].items() if k != "array_tasks"}),
    threads: 2
    resources:
        **res("tokenize"),
    shell:
        "OMP_NUM_THREADS={threads} par tokenize --images {params.root} --vq {input.vq} --out {R}/tokens {params.args}"


rule fetch:
    output:
        f"{R}/downloads/{{file}}",
    params:
        url=lambda wc: download_source(wc)[0],
        sha=lambda wc: download_source(wc)[1],
    shell:
        "par fetch --url {params.url} --out {output} --sha256 '{params.sha}'"
