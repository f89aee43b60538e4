# InBedder reproduction: data -> fine-tuning -> cached answers and hidden states -> scores -> report.
# Paper run:   snakemake --cores 1 --resources gpu=1
# Offline run: snakemake --profile workflow/profiles/offline      (what `make demo` runs)
from snakemake.utils import min_version, validate

min_version("9.27")


configfile: "config.yaml"


validate(config, schema="workflow/schemas/config.schema.yaml")


report: "report/workflow.rst"


include: "workflow/rules/common.smk"


# Wildcards name the experimental axes; model names may hold hyphens, recipes and tasks do not; a
# fine-tune's further training seed follows its recipe after "@" (inbedder@1).
wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    recipe="[A-Za-z0-9_]+(@[0-9]+)?",
    task="[A-Za-z0-9_]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
