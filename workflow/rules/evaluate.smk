# Stage 4: FID / KID / precision-recall / IS with torch-fidelity (offline FID Inception).


def reference_args(wc=None):
    if reference_stats():
        return {"stats": reference_stats()}
    return {"images": f"{R}/reference.npz"}


rule evaluate:
    input:
        samples=f"{R}/samples/{{model}}/samples.npz",
        ref=lambda wc: list(reference_args().values()),
    output:
        f"{R}/metrics/{{model}}.json",
    params:
        ref=lambda wc: ("--reference-stats " if "stats" in reference_args() else "--reference ") + list(reference_args().values())[0],
        args=flags(C["evaluate"]),
    threads: 2
    resources:
        **res("evaluate"),
    shell:
        "OMP_NUM_THREADS={threads} par evaluate --samples {input.samples} {params.ref} --out {output} {params.args} --meta model={wildcards.model}"
