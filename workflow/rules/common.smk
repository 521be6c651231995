# Shared helpers: the grid of cells the config asks for, and the params every job gets.
import os

from ppp.config import (
    client_attacks,
    attack_options,
    client_setting,
    client_victims,
    client_settings,
    server_knows,
    attack_applies as ppp_attack_applies,
    attack_cells as ppp_attack_cells,
    defense_cells as ppp_defense_cells,
    max_victims,
    model_mode,
    noise_options,
    training_options,
)
from ppp.defenses import DEFENSES

RESULTS = "results"
LOGS = f"{RESULTS}/logs"


wildcard_constraints:
    dataset="|".join(config["datasets"]),
    arch="[a-z0-9]+",
    variant="plain|precode",
    defense="|".join(DEFENSES),
    sigma=r"[0-9][0-9.e+-]*",
    state="init|trained",
    client=r"b[0-9]+s[0-9]+(?:lr[0-9][0-9.e+-]*)?(?:m[0-9]+)?",  # ppp.client.SETTING_PATTERN
    attack="[a-z_]+",


def defense_cells(arch, client=None):
    """ppp.config.defense_cells for this run's config: (defense, sigma) pairs of one architecture."""
    return ppp_defense_cells(config, arch, client)


def needs_precode(defense):
    return DEFENSES[defense].needs_precode


def variant_of(defense):
    return "precode" if needs_precode(defense) else "plain"


def client_names(arch):
    """The client settings swept on one architecture: b<images>s1 (FedSGD), b<images>s<local steps>lr<local lr>
    (FedAvg, e.g. b4s2lr0.1)."""
    return [setting.name for setting in client_settings(config, arch)]


def attack_cost(arch, client, attack, cells):
    """A rough relative cost of an attack job, for Snakemake's priority: cells x victims x iterations,
    a quarter for the analytic and head attacks (no second-order term), times the local steps (FedAvg's
    simulation)."""
    options = attack_options(config, arch, attack, client)
    setting = client_setting(config, arch, client)
    share = 0.25 if attack in ("analytic", "head") else 1.0
    return int(
        len(cells)
        * client_victims(config, arch, client)
        * options.get("iterations", 1000)
        * setting.local_steps
        * share
        / 100
    )


def attack_cells():
    """ppp.config.attack_cells for this run's config: every (dataset, arch, client, defense, sigma,
    state, attack) the study attacks."""
    return ppp_attack_cells(config)


def evaluation_cells():
    """Every (dataset, arch, client, state): one evaluate job each."""
    for dataset in config["datasets"]:
        for arch in config["archs"]:
            for client in client_names(arch):
                for state in config["model_states"]:
                    yield dict(dataset=dataset, arch=arch, client=client, state=state)


def model_path(dataset, arch, defense, sigma, state):
    """The weights a cell's updates are computed and attacked with: the shared initialisation of its
    variant, or the cell's own checkpoint."""
    if state == "init":
        return (
            f"{RESULTS}/models/{dataset}/{arch}/{variant_of(defense)}/init.safetensors"
        )
    return f"{RESULTS}/models/{dataset}/{arch}/{defense}/{sigma}/trained.safetensors"


def cell_models(wildcards, arch, cells):
    """The weights of each (defense, sigma) cell, in order (repeated where cells share them)."""
    return [
        model_path(wildcards.dataset, arch, defense, sigma, wildcards.state)
        for defense, sigma in cells
    ]


def attack_applies(attack, defense, arch, client):
    """ppp.config.attack_applies for this run's config."""
    return ppp_attack_applies(config, attack, defense, arch, client)


def attacked_cells(arch, client, attack):
    """The (defense, sigma) cells of one architecture and client setting that an attack applies to."""
    if attack not in client_attacks(config, arch, client):
        return []
    return [
        (defense, sigma)
        for defense, sigma in defense_cells(arch, client)
        if attack_applies(attack, defense, arch, client)
    ]


def cell_groups(cells):
    """Jobs over `cells` as (rule-name suffix, cells): all in one job (attack.grouping: attack), or one job
    per cell (cell), named by its defence and sigma as in the paths (attack_convnet_b1s1_ig_precode_0).
    Capture follows the attacks' grouping, so that one cell's update is written by its own job and a run of
    some defences leaves files a run of more of them keeps."""
    if not cells:
        return []
    if config["attack"].get("grouping", "attack") == "cell":
        return [(f"_{defense}_{sigma}", [(defense, sigma)]) for defense, sigma in cells]
    return [("", list(cells))]


def attack_groups(arch, client, attack):
    """The attack jobs of one architecture, client setting and attack (cell_groups)."""
    return cell_groups(attacked_cells(arch, client, attack))


def reconstruction_grids():
    return [
        f"{RESULTS}/plots/reconstructions_{c['dataset']}_{c['arch']}_{c['client']}_{c['state']}.png"
        for c in evaluation_cells()
    ]


def precode_params():
    return dict(config["precode"])


def data_options(wildcards):
    """The dataset's source options; the victim path is left out so that changing it re-runs only
    what depends on the victims."""
    return {
        k: v for k, v in config["datasets"][wildcards.dataset].items() if k != "victims"
    }


def victims_source(wildcards):
    """The victims' source: the prepared test split for a draw, else the configured victim file."""
    victims = config["datasets"][wildcards.dataset]["victims"]
    if victims == "draw":
        return f"{RESULTS}/data/{wildcards.dataset}/test.safetensors"
    return victims


def victims_draw(wildcards):
    """Which draw from the test split (None: the victims are a file's)."""
    if config["datasets"][wildcards.dataset]["victims"] == "draw":
        return config["victim_draw"]
    return None


def data_source_files(wildcards):
    options = config["datasets"][wildcards.dataset]
    if options.get("source", "bundled") == "bundled":
        # Relative to the working directory, so moving the clone does not change the input set.
        return options.get("path") or os.path.relpath(
            os.path.join(
                workflow.basedir, "data", "bundled", f"{wildcards.dataset}.npz"
            )
        )
    return []


def gpu_request():
    """GPU rules ask for one GPU unless the config pins the CPU; `--resources gpu=N` then keeps
    jobs from overlapping on one card."""
    return 0 if config["device"] == "cpu" else 1


def cell_reconstructions(wildcards):
    """Every attack cell of one (dataset, arch, client, state), in the order of the config."""
    return [
        f"{RESULTS}/attacks/{c['dataset']}/{c['arch']}/{c['client']}/{c['defense']}/{c['sigma']}/{c['state']}/{c['attack']}/reconstructions.safetensors"
        for c in attack_cells()
        if (c["dataset"], c["arch"], c["client"], c["state"])
        == (wildcards.dataset, wildcards.arch, wildcards.client, wildcards.state)
    ]


def evaluation_files():
    return [
        f"{RESULTS}/eval/{c['dataset']}/{c['arch']}/{c['client']}/{c['state']}/metrics.csv"
        for c in evaluation_cells()
    ]


def utility_files():
    if not config["training"]["enabled"]:
        return []
    return [
        f"{RESULTS}/models/{dataset}/{arch}/{defense}/{sigma}/metrics.json"
        for dataset in config["datasets"]
        for arch in config["archs"]
        for defense, sigma in defense_cells(arch)
    ]
