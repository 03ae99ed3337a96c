# Adapting the generator itself: DreamBooth (a subject from a few images, with and
# without prior preservation) and StyleGAN-NADA (a new domain from text alone). Each is in the
# default target when its `enabled` is true (experiment toy_adaptation). NADA's adapted generator is
# an ordinary pipeline folder: a source names it as its `generator:` and the sweeps train on it.

DREAMBOOTH = Path(CFG.dreambooth.output_dir).parent
DREAMBOOTH_VARIANTS = {"prior": True, "no_prior": False}
NADA = Path(CFG.nada.output_dir)


def recipe_hash(section, *ignored):
    """A section's hash without the keys a rule does not read, so that changing how a result is
    measured (or whether it is) does not train the model again."""
    from synrep.config import digest, to_dict

    recipe = {k: v for k, v in to_dict(CFG[section]).items() if k not in ignored}
    return digest({section: recipe, "toyworld": to_dict(CFG.toyworld)})


rule train_dreambooth:
    input:
        local_model_dir(CFG.dreambooth.generator),
    output:
        directory(DREAMBOOTH / "{variant}"),
    params:
        config=recipe_hash("dreambooth", "quality", "probe", "enabled"),
        prior=lambda wildcards: DREAMBOOTH_VARIANTS[wildcards.variant],
    wildcard_constraints:
        variant="|".join(DREAMBOOTH_VARIANTS),
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "train_dreambooth_{variant}.log",
    shell:
        synrep("train_dreambooth", "dreambooth.output_dir={output} dreambooth.with_prior_preservation={params.prior}")


rule dreambooth_quality:
    input:
        CFG.dreambooth.quality.models,
        # a StableRep run whose encoder also scores subject fidelity (a sweep run of the same study)
        [str(Path(CFG.dreambooth.quality.encoder) / "metrics.json")] if CFG.dreambooth.quality.encoder else [],
        local_model_dir(CFG.dreambooth.generator),
        [q for q in [CFG.sample_quality.classifier] if q and Path(q).exists()],
    output:
        table=Path(CFG.dreambooth.quality.output_dir) / "dreambooth_quality.md",
        json=Path(CFG.dreambooth.quality.output_dir) / "dreambooth_quality.json",
    params:
        config=recipe_hash("dreambooth", "probe", "enabled"),
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "dreambooth_quality.log",
    shell:
        synrep("dreambooth_quality")


# DreamBooth as a source: the sweep's runs on the sources named in dreambooth.probe.sources, probed
# for the subject against near-miss rings on real renders
PROBE_RUNS = [run_id for run_id, spec in RUNS.items()
              if spec.method == CFG.dreambooth.probe.method and spec.data in CFG.dreambooth.probe.sources]


rule subject_probe:
    input:
        [RESULTS / "runs" / run_id / "metrics.json" for run_id in PROBE_RUNS],
    output:
        table=Path(CFG.dreambooth.probe.output_dir) / "subject_probe.md",
        json=Path(CFG.dreambooth.probe.output_dir) / "subject_probe.json",
    params:
        config=section_hash(CFG, "dreambooth.probe", "eval", "toyworld"),
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=30,
        mem_mb=4000,
    log:
        LOGS / "subject_probe.log",
    shell:
        synrep("subject_probe")


rule domain_classifier:
    input:
        rules.toyworld.output.train,
        rules.toyworld.output.domains_train,
    output:
        directory(CFG.nada.domain_classifier),
    params:
        config=section_hash(CFG, "toyworld"),
        # its recipe (domain_classifier.recipe): a new seed or epochs retrains it here, not in nada_quality
        epochs=CFG.nada.classifier_epochs,
        seed=CFG.nada.seed,
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=30,
        mem_mb=4000,
    log:
        LOGS / "domain_classifier.log",
    shell:
        synrep("domain_classifier")


rule train_nada:
    input:
        local_model_dir(CFG.nada.generator),
        CFG.nada.clip_models,
        train=rules.toyworld.output.train,
    output:
        generator=directory(NADA / "generator"),
        snapshots=directory(NADA / "snapshots"),
    params:
        config=recipe_hash("nada", "eval_captions", "eval_images_per_caption", "domain_classifier",
                           "classifier_epochs", "target_world", "enabled"),
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "train_nada.log",
    shell:
        synrep("train_nada")


rule nada_quality:
    input:
        rules.train_nada.output.snapshots,
        # its model_index.json: where the adapted UNet takes over from the frozen one
        rules.train_nada.output.generator,
        rules.domain_classifier.output,
        [q for q in [CFG.sample_quality.classifier] if q and Path(q).exists()],
    output:
        table=NADA / "quality" / "nada_quality.md",
        curve=NADA / "quality" / "nada_curve.png",
    params:
        config=section_hash(CFG, "nada", "generation", "toyworld"),
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "nada_quality.log",
    shell:
        synrep("nada_quality")


# NADA's target domain rendered as real images: the evaluation set of the domain-shift study
# (eval.root in experiment toy_adaptation)
rule nada_target_world:
    output:
        train=Path(CFG.nada.target_world) / "real" / "train.npz",
        val=Path(CFG.nada.target_world) / "real" / "val.npz",
        test=Path(CFG.nada.target_world) / "real" / "test.npz",
    params:
        config=section_hash(CFG, "toyworld"),
        target=CFG.nada.target,
    priority: EARLY_PRIORITY
    threads: 1
    log:
        LOGS / "nada_target_world.log",
    shell:
        synrep("nada_target_world")


ADAPTATION_TARGETS = (
    [rules.dreambooth_quality.output.table] if CFG.dreambooth.enabled else []
) + ([rules.subject_probe.output.table] if CFG.dreambooth.enabled and CFG.dreambooth.probe.sources else []) + (
    [rules.nada_quality.output.table] if CFG.nada.enabled else []
)
