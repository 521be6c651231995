"""Config validation against the workflow's JSON schema, with one clear message per problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "config.yaml"


class ConfigError(ValueError):
    pass


def _with_defaults(validator_class):
    """A validator that fills in `default` values while validating (as Snakemake's validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    allowed = ""
    if "enum" in error.schema:
        allowed = f"; allowed: {error.schema['enum']}"
    return f"config key '{key}': {error.message}{allowed}"


def validate_config(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate in place, fill defaults, and raise ConfigError naming the first bad key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(_describe(error))
    _check_datasets(config)
    check_client_settings(config)
    return config


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base` in place as `snakemake --configfile` merges a preset over the
    Snakefile's config: nested dicts merge key by key, anything else (lists included) is replaced."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_config(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_preset(paths: str | Path | list[str | Path], base: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """One preset or several, as the workflow runs them (`snakemake --configfile a.yaml b.yaml`): each
    merged in turn over config/config.yaml (skipped where it is that file), validated, defaults filled."""
    def read(file):
        try:
            loaded = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"config file {file}: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file}: expected a mapping of config keys")
        return loaded
    config = read(base)
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        if Path(path).resolve() != Path(base).resolve():
            merge_config(config, read(path))
    return validate_config(config)


def check_victim_files(config: dict[str, Any], base: str | Path = ".") -> None:
    """Read every configured victim file before any job starts (they are small), so that a bad one
    (non-finite pixels, none at all, wrong shape or labels, too few for the config) stops the run with
    one message naming it. A missing file is left to Snakemake, which names it as a missing input."""
    from ppp.data import known_facts, load_victims
    from ppp.io import ArtifactError

    wanted = max_victims(config)
    for name, options in config.get("datasets", {}).items():
        if options["victims"] == "draw":
            continue  # drawn from the test split by prepare_victims, which checks there are enough
        path = Path(base) / options["victims"]
        if not path.is_file():
            continue
        facts = known_facts(name, options)
        facts.setdefault("num_classes", 2 ** 31)  # a user's dataset: its classes are known once its data is read
        try:
            images, _ = load_victims(path, name, int(options.get("image_size", 32)), facts)
        except (ArtifactError, ValueError) as err:
            raise ConfigError(f"config key 'datasets.{name}.victims': {err}") from None
        if images.shape[0] < wanted:
            raise ConfigError(f"config key 'datasets.{name}.victims': {path} has {images.shape[0]} victims, "
                              f"the config attacks {wanted} per cell (attack.*.victims)")


def max_victims(config: dict[str, Any]) -> int:
    """Victims prepared per dataset: the most any architecture attacks."""
    return max(max([victims_per_cell(config, arch)]
                   + [client_victims(config, arch, s.name) for s in client_settings(config, arch)])
               for arch in config["archs"])


def check_client_settings(config: dict[str, Any]) -> None:
    """Every swept update fits the architecture's victims (at least one whole update)."""
    from ppp.client import ClientSetting

    for arch in config["archs"]:
        try:
            names = [setting.name for setting in client_settings(config, arch)]
        except ValueError as error:  # e.g. a local_batch that does not divide the update's images
            raise ConfigError(f"config key 'client.updates' ({arch}): {error}") from None
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"config key 'client.updates': {arch} lists the setting {', '.join(twice)} twice "
                              f"(same images, local steps and, for FedAvg, local_lr; its settings: {names})")
        for setting in client_settings(config, arch):
            # The name is the setting (paths, rules, the scripts' ClientSetting.parse): its lr must be exact.
            if ClientSetting.parse(setting.name, setting.local_lr) != setting:
                raise ConfigError(f"config key 'client.updates': {arch}'s local_lr {setting.local_lr!r} has more "
                                  f"than 6 significant digits; its setting's name {setting.name} would round it")
        for setting, update in zip(client_settings(config, arch), _client_updates(config, arch)):
            own_attack = update.get("attack", {})
            if "victims" in own_attack or any("victims" in o for o in own_attack.get("per_attack", {}).values()):
                raise ConfigError(f"config key 'client.updates': setting {setting.name} of {arch} sets attack.victims; "
                                  "give the update's own victims key instead")
            unknown = sorted(set(update.get("defenses", [])) - set(config["defenses"]))
            if unknown:
                raise ConfigError(f"config key 'client.updates': setting {setting.name} of {arch} lists defences "
                                  f"{unknown} that are not in 'defenses' ({config['defenses']})")
            for attack, defenses in update.get("attack_defenses", {}).items():
                unknown = sorted(set(defenses) - set(config["defenses"]))
                if unknown:
                    raise ConfigError(f"config key 'client.updates': setting {setting.name} of {arch} runs {attack} "
                                      f"on defences {unknown} (attack_defenses) that are not in 'defenses' "
                                      f"({config['defenses']})")
            # A preset merged over another may run fewer attacks: a setting's list is cut to `attacks`, and
            # only a name no attack has is an error.
            from ppp.attacks.registry import ATTACKS

            unknown = sorted(set(update.get("attacks", [])) - set(ATTACKS))
            if unknown:
                raise ConfigError(f"config key 'client.updates': setting {setting.name} of {arch} lists unknown "
                                  f"attacks {unknown} (known: {sorted(ATTACKS)})")
            victims = client_victims(config, arch, setting.name)
            if setting.images > victims:
                raise ConfigError(f"config key 'client.updates': an update of {setting.images} images needs at "
                                  f"least {setting.images} victims per cell; {arch} attacks {victims} "
                                  "(attack.*.victims)")


def _check_datasets(config: dict[str, Any]) -> None:
    """What the schema cannot say: a dataset that is not one of the field's needs its channels and a
    source that can hold it, its normalisation one value per channel, and a bundled source its file."""
    from ppp.data import BUNDLED_DIR, DATASETS, known_facts

    for name, options in config.get("datasets", {}).items():
        source = options.get("source", "bundled")
        try:
            known_facts(name, options)
        except ValueError as err:  # "datasets.<name>.<key>: what is wrong"
            key, _, message = str(err).partition(": ")
            raise ConfigError(f"config key '{key}': {message}") from None
        if name not in DATASETS and source == "torchvision":
            raise ConfigError(f"config key 'datasets.{name}.source': torchvision knows only "
                              f"{', '.join(DATASETS)}; use imagefolder (or bundled with a path) for {name!r}")
        if source == "bundled" and not options.get("path") and not (BUNDLED_DIR / f"{name}.npz").exists():
            raise ConfigError(f"config key 'datasets.{name}.source': no bundled subset of {name!r} is shipped "
                              f"(data/bundled has {', '.join(sorted(p.stem for p in BUNDLED_DIR.glob('*.npz')))}); "
                              "give a path, or use torchvision or imagefolder with a root")
        if source in ("torchvision", "imagefolder") and not options.get("root"):
            raise ConfigError(f"config key 'datasets.{name}.root': source {source!r} needs a root folder")


def attack_options(config: dict, arch: str, attack: str | None = None, client: str | None = None) -> dict:
    """The options of one attack on one architecture (at one client setting): attack.defaults,
    overridden by attack.per_arch.<arch>, by attack.per_attack.<attack>, by
    attack.per_attack.<attack>.per_arch.<arch>, then by the client setting's own `attack` options and
    their per_attack.<attack> (an update of several images needs a longer budget than one image)."""
    section = config.get("attack", {})
    own = dict(section.get("per_attack", {}).get(attack, {})) if attack else {}
    own_per_arch = own.pop("per_arch", {})
    options = {**section.get("defaults", {}), **section.get("per_arch", {}).get(arch, {}), **own,
               **own_per_arch.get(arch, {})}
    if client is not None:
        setting = dict(_client_update(config, arch, client).get("attack", {}))
        per_attack = setting.pop("per_attack", {})
        options.update({**setting, **(per_attack.get(attack, {}) if attack else {})})
    options.pop("victims", None)
    return options


def noise_options(config: dict) -> dict:
    """How noising defences draw: the distribution, whether sigma is relative to each gradient, and
    DP-SGD's clipping norm and delta."""
    noise, dp = config.get("noise", {}), config.get("dpsgd", {})
    return {"distribution": noise.get("distribution", "gaussian"),
            "relative": noise.get("scale_mode", "absolute") == "relative",
            "max_grad_norm": float(dp.get("max_grad_norm", 1.0)), "delta": float(dp.get("delta", 1e-5)),
            "clipping": dp.get("clipping", "auto")}


def attack_runs_on(config: dict, attack: str, defense: str, arch: str | None = None,
                   client: str | None = None) -> bool:
    """Whether the study runs `attack` on `defense` (attack_defenses.<attack>; default: everywhere it
    applies). At a client setting (arch and client given), the setting's own attack_defenses.<attack>
    replaces the study's."""
    lists = dict(config.get("attack_defenses", {}))
    if arch is not None and client is not None:
        lists.update(_client_update(config, arch, client).get("attack_defenses", {}))
    return defense in lists.get(attack, [defense])


def attack_applies(config: dict, attack: str, defense: str, arch: str | None = None,
                   client: str | None = None) -> bool:
    """Whether a cell of `defense` is attacked by `attack`: the targeted attacks need PRECODE (they are
    defined by its position), and attack_defenses (the study's, or the client setting's own) may restrict
    any attack. The workflow's cells and the benchmarks' plans both ask this."""
    from ppp.attacks.registry import attack_needs_precode
    from ppp.defenses import DEFENSES

    return ((DEFENSES[defense].needs_precode or not attack_needs_precode(attack))
            and attack_runs_on(config, attack, defense, arch, client))


def defense_applies(config: dict, arch: str, defense: str) -> bool:
    """Whether the study runs `defense` on `arch`: every architecture unless defense_archs.<defense>
    lists them."""
    return arch in config.get("defense_archs", {}).get(defense, [arch])


def defense_scales(config: dict, arch: str, defense: str) -> list[float]:
    """The sigma grid of one noising defence on one architecture: DP-SGD's noise multipliers
    (dpsgd.noise_multipliers), else noise_scales."""
    if defense == "dpsgd":
        return list(config.get("dpsgd", {}).get("noise_multipliers", [0.5, 1.0]))
    return noise_scales(config, arch)


def sigma_label(value: float | str) -> str:
    """A noise scale as the workflow's paths and tables spell it (0.01, 1e-05; 0 where none)."""
    return f"{float(value):g}"


def defense_cells(config: dict, arch: str, client: str | None = None) -> Iterator[tuple[str, str]]:
    """The (defense, sigma label) cells of one architecture (at one client setting, where it names its
    own defences): one per noise scale for the noising defences (the architecture's own grid where
    noise.per_arch gives one; DP-SGD's noise multipliers), sigma "0" otherwise."""
    from ppp.defenses import uses_noise

    swept = client_defenses(config, arch, client) if client else config["defenses"]
    for defense in swept:
        if not defense_applies(config, arch, defense):
            continue
        if uses_noise(defense):
            for scale in defense_scales(config, arch, defense):
                yield defense, sigma_label(scale)
        else:
            yield defense, "0"


def attack_cells(config: dict) -> Iterator[dict[str, str]]:
    """Every attack cell the study runs: (dataset, arch, client, defense, sigma, state, attack), where
    attack_applies. The workflow's jobs (workflow/rules/common.smk) and the cost projections
    (benchmarks/attack_flops.py) both enumerate this, so they cannot disagree on the grid."""
    for dataset in config["datasets"]:
        for arch in config["archs"]:
            for setting in client_settings(config, arch):
                client = setting.name
                for defense, sigma in defense_cells(config, arch, client):
                    for state in config["model_states"]:
                        for attack in client_attacks(config, arch, client):
                            if attack_applies(config, attack, defense, arch, client):
                                yield dict(dataset=dataset, arch=arch, client=client, defense=defense,
                                           sigma=sigma, state=state, attack=attack)


def victims_per_cell(config: dict, arch: str) -> int:
    attack = config.get("attack", {})
    return int(attack.get("per_arch", {}).get(arch, {}).get("victims", attack.get("defaults", {}).get("victims", 8)))


def training_options(config: dict, arch: str) -> dict:
    training = {k: v for k, v in config.get("training", {}).items() if k not in ("per_arch", "enabled", "grouping")}
    return {**training, **config.get("training", {}).get("per_arch", {}).get(arch, {})}


def model_mode(config: dict, arch: str) -> str:
    """The threat model's model mode for one architecture (eval or train), used by capture and attack."""
    threat = config.get("threat_model", {})
    return str(threat.get("per_arch", {}).get(arch, {}).get("model_mode", threat.get("model_mode", "eval")))


def noise_scales(config: dict, arch: str) -> list[float]:
    """The sigma grid of one architecture: noise.per_arch.<arch>.scales, else noise.scales."""
    noise = config.get("noise", {})
    return list(noise.get("per_arch", {}).get(arch, {}).get("scales", noise["scales"]))


def client_settings(config: dict, arch: str) -> list:
    """The client updates swept on one architecture (ppp.client.ClientSetting): client.per_arch.<arch>
    overrides client's updates and local_lr, and an update's own local_lr overrides both; local_batch is
    the update's images per local step (0: all of them)."""
    from ppp.client import ClientSetting

    client = config.get("client", {})
    own = client.get("per_arch", {}).get(arch, {})
    updates = _client_updates(config, arch)
    local_lr = float(own.get("local_lr", client.get("local_lr", 0.01)))
    return [ClientSetting(int(u.get("images", 1)), int(u.get("local_steps", 1)), float(u.get("local_lr", local_lr)),
                          int(u.get("local_batch", 0)))
            for u in updates]


def _client_updates(config: dict, arch: str) -> list[dict]:
    client = config.get("client", {})
    return client.get("per_arch", {}).get(arch, {}).get("updates", client.get("updates", [{"images": 1}]))


def _swept_setting(config: dict, arch: str, name: str) -> tuple:
    """One swept setting of an architecture, named by the workflow's wildcard (b<images>s1 for FedSGD,
    b<images>s<steps>lr<local lr> for FedAvg): its ClientSetting and its configured entry (client.updates
    or client.per_arch.<arch>.updates)."""
    for setting, update in zip(client_settings(config, arch), _client_updates(config, arch)):
        if setting.name == name:
            return setting, update
    raise ValueError(f"client setting {name!r} is not swept for {arch} (its settings: "
                     f"{[s.name for s in client_settings(config, arch)]})")


def _client_update(config: dict, arch: str, name: str) -> dict:
    return _swept_setting(config, arch, name)[1]


def client_victims(config: dict, arch: str, name: str) -> int:
    """Victims attacked per cell at one client setting: the update's own `victims`, else the
    architecture's (attack.*.victims); whole updates of them are used."""
    return int(_client_update(config, arch, name).get("victims", victims_per_cell(config, arch)))


def client_defenses(config: dict, arch: str, name: str) -> list[str]:
    """The defences swept at one client setting: the update's own `defenses`, else every defence."""
    update = _client_update(config, arch, name)
    return [d for d in config["defenses"] if d in update.get("defenses", config["defenses"])]


def client_attacks(config: dict, arch: str, name: str) -> list[str]:
    """The attacks run at one client setting: the update's own `attacks`, else every attack."""
    update = _client_update(config, arch, name)
    return [a for a in config["attacks"] if a in update.get("attacks", config["attacks"])]


def client_setting(config: dict, arch: str, name: str):
    """The swept setting of one architecture named by the workflow's wildcard (b<images>s1 for FedSGD,
    b<images>s<steps>lr<local lr> for FedAvg)."""
    return _swept_setting(config, arch, name)[0]


def server_knows(config: dict, key: str) -> bool:
    """What the server is told of a client update (client.server_knows.<key>)."""
    return bool(config.get("client", {}).get("server_knows", {}).get(key, True))
