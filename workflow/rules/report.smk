# Stage 5: every table (Markdown, CSV, LaTeX) from the result files, then the report people read first.
TABLES = sorted(config["tables"])


rule tables:
    input:
        metrics=expand(f"{R}/metrics/{{model}}.json", model=MODELS),
        sampling=expand(f"{R}/samples/{{model}}/sampling.json", model=MODELS),
    output:
        expand(f"{A}/tables/{{table}}.{{ext}}", table=TABLES, ext=["md", "csv", "tex"]),
    resources:
        **res("report"),
    shell:
        "par tables --config config.yaml --preset {P} --results {R} --out {A}/tables"


rule report:
    input:
        rules.tables.output,
        rules.entropy_figures.output,
        expand(f"{R}/samples/{{model}}/grid.png", model=MODELS),
    output:
        md=f"{A}/report.md",
        html=f"{A}/report.html",
    resources:
        **res("report"),
    shell:
        "par report --config config.yaml --preset {P} --results {R} --analysis {A}"
