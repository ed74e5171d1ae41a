# Entropy analysis (paper §8): codes → codebook features → H(v_i | v_ref) maps and the n=4 entropy increase.
# Each rule runs `par entropy ACTION`: par/analysis/entropy/cli.py, one file per step beside it (features.py,
# estimate.py, maps.py, summary.py, figures.py).
# Its arguments: par/workflow/analysis.py (AnalysisArgs); what several rule files read: par/workflow/preset.py.


rule entropy_features:
    input:
        tokens=f"{results}/tokens/manifest.json",
        vq=experiment.vq_path(),
    output:
        f"{results}/entropy/features.npz",
    log:
        f"{results}/logs/entropy_features/entropy_features.log",
    benchmark:
        f"{results}/benchmarks/entropy_features/entropy_features.tsv"
    params:
        codes=input_folder,
        args=experiment.entropy_features_args(),
    resources:
        **experiment.resources("entropy"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par entropy features --codes {params.codes} --codebook {input.vq} --out {output} {params.args} "
        "> {log} 2>&1"


rule entropy_map:
    input:
        f"{results}/entropy/features.npz",
    output:
        f"{results}/entropy/map_{{ref}}.npz",
    log:
        f"{results}/logs/entropy_map/{{ref}}.log",
    benchmark:
        f"{results}/benchmarks/entropy_map/{{ref}}.tsv"
    params:
        args=entropy_map_args,
    resources:
        **experiment.resources("entropy"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par entropy map --features {input} --out {output} {params.args} > {log} 2>&1"


rule entropy_increase:
    input:
        f"{results}/entropy/features.npz",
    output:
        f"{results}/entropy/increase_{{order}}.npz",
    log:
        f"{results}/logs/entropy_increase/{{order}}.log",
    benchmark:
        f"{results}/benchmarks/entropy_increase/{{order}}.tsv"
    params:
        args=experiment.entropy_increase_args(),
    resources:
        **experiment.resources("entropy"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par entropy increase --features {input} --order {wildcards.order} --out {output} {params.args} "
        "> {log} 2>&1"


rule entropy_figures:
    input:
        expand(f"{results}/entropy/map_{{ref}}.npz", ref=experiment.entropy_references()),
        expand(f"{results}/entropy/increase_{{order}}.npz", order=["par", "raster"]),
    output:
        f"{analysis}/entropy/entropy_maps.png",
        f"{analysis}/entropy/entropy_increase.png",
        f"{analysis}/entropy/entropy_summary.json",
    log:
        f"{results}/logs/entropy_figures/entropy_figures.log",
    benchmark:
        f"{results}/benchmarks/entropy_figures/entropy_figures.tsv"
    params:
        outdir=output_folder,
    resources:
        **experiment.resources("entropy"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par entropy figures --maps {input} --outdir {params.outdir} > {log} 2>&1"


rule entropy_maps:
    input:
        rules.entropy_figures.output,
