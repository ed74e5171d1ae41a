# Entropy analysis (paper §8): codes → codebook features → H(v_i | v_ref) maps and the n=4 entropy increase.
E = C["entropy"]
REFS = [f"{r}_{c}" for r, c in E["references"]]


rule entropy_features:
    input:
        tokens=f"{R}/tokens/manifest.json",
        vq=vq_file(),
    output:
        f"{R}/entropy/features.npz",
    params:
        n=E["num_images"],
    resources:
        **res("entropy"),
    shell:
        "par entropy features --codes {R}/tokens --codebook {input.vq} --num-images {params.n} --out {output}"


rule entropy_map:
    input:
        f"{R}/entropy/features.npz",
    output:
        f"{R}/entropy/map_{{ref}}.npz",
    params:
        ref=lambda wc: wc.ref.replace("_", ","),
        est=E["estimator"],
        alpha=E["alpha"],
    resources:
        **res("entropy"),
    shell:
        "par entropy map --features {input} --reference {params.ref} --estimator {params.est} --alpha {params.alpha} --out {output}"


rule entropy_increase:
    input:
        f"{R}/entropy/features.npz",
    output:
        f"{R}/entropy/increase_{{order}}.npz",
    params:
        n=E["n"],
        est=E["estimator"],
        alpha=E["alpha"],
    resources:
        **res("entropy"),
    shell:
        "par entropy increase --features {input} --order {wildcards.order} --n {params.n} --estimator {params.est} --alpha {params.alpha} --out {output}"


rule entropy_figures:
    input:
        expand(f"{R}/entropy/map_{{ref}}.npz", ref=REFS),
        expand(f"{R}/entropy/increase_{{order}}.npz", order=["par", "raster"]),
    output:
        f"{A}/entropy/entropy_maps.png",
        f"{A}/entropy/entropy_increase.png",
    resources:
        **res("entropy"),
    shell:
        "par entropy figures --maps {input} --outdir {A}/entropy"


rule entropy_maps:
    input:
        rules.entropy_figures.output,
