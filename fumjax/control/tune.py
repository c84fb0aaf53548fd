"""Bayesian tuning of the sensitive parameters (FUM E.1) with optuna, candidates run as a `jax.vmap` ensemble.

The objective is measured on a small reward-learning task: a readout network (`fumjax.train.digits`'s
input -> output with lateral inhibition) learns a few classes of scikit-learn digits from the SIE reward
alone. Per item: one window of `fumjax.simulate` (R-STDP), decode (most spikes wins), external r = +1/-1,
then the SIE total reward R = w_td TD + w_novelty novelty - w_habituation habituation + w_self self_benefit
(TD(0) over the class-population states, novelty/habituation over the inputs, self-benefit of the output
rates; smoothed, capped for highly novel inputs), and w += eta_eff(R) R e, followed by the recipe's synaptic
scaling and threshold adaptation. Objective "accuracy": validation accuracy with frozen weights after the
training items; "reward": mean R over the last `reward_window` training items (the SIE weights are then left
out of the search: R would grow just by scaling them up).

eta and the SIE weights are traced per candidate (eta scales the eligibility handed to `apply_reward`, whose
config has eta = 1, so eta_eff(R) R (eta e) = 2 eta sigmoid(R) R e exactly); gamma is compiled into the
step (its eligibility tables), so a batch's candidates are grouped by gamma, each group one vmapped run padded
to the batch size. All candidates see the same items, order and input spikes (common random numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fumjax
from fumjax import plasticity as plast
from fumjax import sie
from fumjax.config import FumConfig
from fumjax.state import eligibility
from fumjax.train import digits

__all__ = [
    "TuneTask",
    "SearchSpace",
    "default_params",
    "evaluate_candidates",
    "tune",
    "config_with",
    "write_config_toml",
]

PARAM_KEYS = ("eta", "gamma", "w_td", "w_novelty", "w_habituation", "w_self_benefit")
SIE_KEYS = PARAM_KEYS[2:]


@dataclasses.dataclass(frozen=True)
class TuneTask:
    """The small learning task an objective is measured on (sizes kept small: seconds per ensemble)."""

    classes: tuple[int, ...] = (0, 1, 2, 3)
    n_per_class: int = 2
    n_train: int = 160
    n_val: int = 120
    epochs: int = 1
    objective: str = "accuracy"
    reward_window: int = 50
    seed: int = 0
    n_seeds: int = 3  # the objective is the mean over task seeds seed, seed + 1, ... (items, order, weights)

    def __post_init__(self) -> None:
        if self.objective not in ("accuracy", "reward"):
            raise ValueError(f"objective = {self.objective!r}: must be 'accuracy' or 'reward'")
        if len(set(self.classes)) < 2 or not all(0 <= c <= 9 for c in self.classes):
            raise ValueError(f"classes = {self.classes}: need >= 2 distinct digits 0..9")
        if min(self.n_train, self.n_val, self.epochs, self.n_per_class, self.reward_window, self.n_seeds) < 1:
            raise ValueError("n_train, n_val, epochs, n_per_class, reward_window and n_seeds must be >= 1")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Ranges of the search (FUM E.1: eta in [0.005, 0.02], gamma in [0.9, 0.98], SIE weights in [0.5, 2];
    widened here so the tuner can find a smaller eta and switch a reward component off)."""

    eta: tuple[float, float] = (0.001, 0.05)
    gammas: tuple[float, ...] = (0.9, 0.92, 0.95, 0.98)
    sie_weight: tuple[float, float] = (0.0, 2.0)


def default_params(cfg: FumConfig | None = None) -> dict[str, float]:
    """The tuned parameters' values in a config (FumConfig() by default)."""
    cfg = cfg or FumConfig()
    return {
        "eta": cfg.plasticity.eta,
        "gamma": cfg.plasticity.gamma,
        **{k: getattr(cfg.sie, k) for k in SIE_KEYS},
    }


def config_with(cfg: FumConfig, params: dict[str, float]) -> FumConfig:
    """cfg with the tuned parameters set."""
    return cfg.replace(
        plasticity={"eta": float(params["eta"]), "gamma": float(params["gamma"])},
        sie={k: float(params[k]) for k in SIE_KEYS},
    )


def _task_data(task: TuneTask):
    x_tr, x_te, y_tr, y_te = digits.load_digits_split()
    cls = np.asarray(task.classes)

    def pick(x, y, n, seed):
        keep = np.flatnonzero(np.isin(y, cls))
        keep = np.random.default_rng(seed).permutation(keep)[:n]
        return x[keep], np.searchsorted(np.sort(cls), y[keep]).astype(np.int32)

    xt, yt = pick(x_tr, y_tr, task.n_train, task.seed)
    xv, yv = pick(x_te, y_te, task.n_val, task.seed + 1)
    return xt, yt, xv, yv


def _recipe(task: TuneTask) -> digits.DigitsRecipe:
    return dataclasses.replace(digits.default_recipe(), n_per_class=task.n_per_class)


def _engine_config(task: TuneTask, gamma: float, base: FumConfig) -> FumConfig:
    """The recipe's engine settings, with this gamma, eta = 1 (eta enters through the eligibility) and the
    base config's SIE settings other than the weights (which are traced)."""
    return digits.recipe_config(gamma=gamma, eta=1.0, seed=task.seed).replace(
        sie={
            f.name: getattr(base.sie, f.name) for f in dataclasses.fields(base.sie) if f.name not in SIE_KEYS
        }
    )


@functools.partial(
    jax.jit, static_argnames=("cfg", "recipe", "n_in", "n_classes", "epochs", "objective", "rw")
)
def _run_ensemble(
    theta,
    w0,
    state,
    sie0,
    net,
    pop,
    v_th0,
    xt,
    yt,
    xv,
    yv,
    seed,
    *,
    cfg,
    recipe,
    n_in,
    n_classes,
    epochs,
    objective,
    rw,
):
    """theta: (B, 5) eta and SIE weights per candidate -> (B,) objective averaged over S task seeds.

    w0: (S, E) initial weights; xt, yt: (S, n_train, ...) and xv, yv: (S, n_val, ...) items; seed: (S,)."""
    t_win = cfg.run.window_steps
    n = net.n_neurons
    out_mask = pop >= 0
    plastic_syn = net.plastic_pre[net.pre] & (net.pre < n_in)
    sc = cfg.sie
    target = digits._norm_target(recipe, n_in)

    def pop_counts_of(spikes):
        counts = spikes.sum(0, dtype=jnp.int32)
        pc = jax.ops.segment_sum(counts, jnp.where(out_mask, pop, n_classes), num_segments=n_classes + 1)
        return counts, pc[:n_classes]

    def drive(x, k, s):
        spk = digits.encode_item(
            x, seed=s, first_step=k * t_win, n_steps=t_win, p_max=recipe.p_max, encoding=recipe.encoding
        )
        return jnp.zeros((t_win, n), jnp.float32).at[:, :n_in].set(spk.astype(jnp.float32) * recipe.in_amp_mV)

    def one(th, w_init, xt, yt, xv, yv, seed):
        eta, w_sie = th[0], th[1:]

        def item(carry, inp):
            s, m, prev = carry
            x, y, k = inp
            s = digits.rest_state(s, cfg.neuron.v_rest_mV)
            s, spikes = fumjax.simulate(s, net, drive(x, k, seed), config=cfg, plasticity="rstdp")
            counts, pc = pop_counts_of(spikes)
            pred = jnp.argmax(pc)
            correct = (pred == y) & (pc.sum() > 0)
            r_ext = jnp.where(correct, 1.0, -1.0)
            v_states, td = sie.td_update(m.v_states, prev, pred, r_ext, gamma=sc.td_gamma, alpha=sc.td_alpha)
            m, novelty, hab = sie.novelty_and_habituation(m.replace(v_states=v_states), x, sc)
            rates_hz = counts[n_in:].astype(jnp.float32) * (1000.0 / t_win)  # output neurons follow inputs
            benefit = sie.self_benefit(rates_hz, target_var=sc.target_rate_var)
            total = w_sie[0] * td + w_sie[1] * novelty - w_sie[2] * hab + w_sie[3] * benefit
            m, smoothed = sie.smooth_reward(m, total)
            reward = jnp.where(novelty > sc.novelty_cap, jnp.minimum(smoothed, 0.0), smoothed)
            e = eligibility(s, cfg)
            s = fumjax.end_window(s, 0.0, config=cfg, plasticity="rstdp")  # bookkeeping; R = 0 moves nothing
            w = plast.apply_reward(s.w, jnp.where(plastic_syn, eta * e, 0.0), reward, cfg)
            w = digits.normalize_incoming(w, net.post, plastic_syn, n, target, recipe.norm)
            v_th = digits.adapt_thresholds(
                s.v_th_mV, v_th0, counts, out_mask, recipe.theta_plus_mV, recipe.theta_relax
            )
            return (s.replace(w=w, v_th_mV=v_th), m, pred), (correct, reward)

        carry = (state.replace(w=w_init), sie0, jnp.int32(0))
        ks = jnp.arange(xt.shape[0], dtype=jnp.int32)
        rewards = None
        for ep in range(epochs):  # epochs is static and small
            carry, (_, rewards) = jax.lax.scan(item, carry, (xt, yt, ks + ep * xt.shape[0]))
        if objective == "reward":
            return rewards[-rw:].mean()
        s = digits.rest_state(carry[0], cfg.neuron.v_rest_mV)

        def predict(x, k):
            _, spikes = fumjax.simulate(s, net, drive(x, k, seed + 1), config=cfg, plasticity="off")
            _, pc = pop_counts_of(spikes)
            return jnp.where(pc.sum() > 0, jnp.argmax(pc), -1)

        pred = jax.vmap(predict)(xv, jnp.arange(xv.shape[0], dtype=jnp.int32))
        return (pred == yv).mean()

    over_seeds = jax.vmap(one, in_axes=(None, 0, 0, 0, 0, 0, 0))
    return jax.vmap(lambda th: over_seeds(th, w0, xt, yt, xv, yv, seed).mean())(theta)


def evaluate_candidates(
    params: Sequence[dict[str, float]],
    task: TuneTask,
    *,
    base: FumConfig | None = None,
    batch: int | None = None,
) -> np.ndarray:
    """Objective (len(params),) of each candidate (dict of PARAM_KEYS) on `task`. Candidates sharing a gamma
    run as one vmapped ensemble padded to `batch` (default len(params)): one compiled shape per gamma."""
    base = base or FumConfig()
    batch = batch or len(params)
    recipe = _recipe(task)
    n_classes = len(task.classes)
    seeds = [task.seed + i for i in range(task.n_seeds)]
    data = [_task_data(dataclasses.replace(task, seed=s)) for s in seeds]
    xt, yt, xv, yv = (np.stack(a) for a in zip(*data, strict=True))
    nets = [digits.build_readout_network(2 * xt.shape[2], n_classes, recipe, s) for s in seeds]
    net, pop = nets[0]  # same topology for every seed; only the initial weights differ
    w0 = jnp.asarray(np.stack([np.asarray(m.w0) for m, _ in nets]))
    out = np.full(len(params), np.nan)
    gammas = sorted({float(p["gamma"]) for p in params})
    for g in gammas:
        idx = [i for i, p in enumerate(params) if float(p["gamma"]) == g]
        cfg = _engine_config(task, g, base)
        state = fumjax.init_state(net, cfg)
        sie0 = sie.init_sie(n_classes, xt.shape[2], cfg)
        for lo in range(0, len(idx), batch):
            chunk = idx[lo : lo + batch]
            theta = np.array(
                [[params[i]["eta"]] + [params[i][k] for k in SIE_KEYS] for i in chunk], np.float32
            )
            theta = np.concatenate([theta, np.repeat(theta[-1:], batch - len(chunk), 0)])
            res = _run_ensemble(
                jnp.asarray(theta),
                w0,
                state,
                sie0,
                net,
                jnp.asarray(pop),
                jnp.asarray(net.v_th_mV),
                jnp.asarray(xt),
                jnp.asarray(yt),
                jnp.asarray(xv),
                jnp.asarray(yv),
                jnp.asarray(seeds, jnp.uint32),
                cfg=cfg,
                recipe=recipe,
                n_in=2 * xt.shape[2],
                n_classes=n_classes,
                epochs=task.epochs,
                objective=task.objective,
                rw=min(task.reward_window, task.n_train),
            )
            out[chunk] = np.asarray(res)[: len(chunk)]
    return out


def tune(
    task: TuneTask,
    *,
    n_trials: int,
    batch: int,
    space: SearchSpace | None = None,
    base: FumConfig | None = None,
    seed: int = 0,
    trials_path: str | Path | None = None,
    storage: str | None = None,
    verbose: bool = False,
) -> dict:
    """Optuna's TPE sampler over n_trials, `batch` candidates per vmapped round; trial 0 is the base config.

    Returns default_objective, best_objective, best_params, trials (list of dicts) and timings. Each trial is
    appended to trials_path (JSONL) as it completes; `storage` is an optional optuna RDB URL.
    """
    import optuna

    space = space or SearchSpace()
    base = base or FumConfig()
    if n_trials < 2 or batch < 1:
        raise ValueError(f"n_trials = {n_trials}, batch = {batch}: need n_trials >= 2 and batch >= 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=seed, constant_liar=True, n_startup_trials=min(8, n_trials // 2)
    )
    name = f"fumjax-tune-{seed}" if storage else None
    study = optuna.create_study(direction="maximize", sampler=sampler, storage=storage, study_name=name)
    defaults = default_params(base)
    tune_sie = task.objective == "accuracy"
    study.enqueue_trial(defaults if tune_sie else {k: defaults[k] for k in ("eta", "gamma")})
    trials_file = Path(trials_path) if trials_path is not None else None
    records, t_start, done = [], time.perf_counter(), 0
    while done < n_trials:
        k = min(batch, n_trials - done)
        asked, params = [], []
        for _ in range(k):
            tr = study.ask()
            p = {
                "eta": tr.suggest_float("eta", *space.eta, log=True),
                "gamma": tr.suggest_categorical("gamma", list(space.gammas)),
            }
            for key in SIE_KEYS:
                p[key] = tr.suggest_float(key, *space.sie_weight) if tune_sie else defaults[key]
            asked.append(tr)
            params.append(p)
        t0 = time.perf_counter()
        values = evaluate_candidates(params, task, base=base, batch=batch)
        dt = time.perf_counter() - t0
        for tr, p, v in zip(asked, params, values, strict=True):
            study.tell(tr, float(v))
            rec = {"trial": tr.number, "params": p, "objective": float(v), "round_seconds": round(dt, 2)}
            records.append(rec)
            if trials_file is not None:
                with trials_file.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
        done += k
        if verbose:
            best = max(r["objective"] for r in records)
            print(f"trials {done}/{n_trials}: round of {k} in {dt:.1f} s, best {best:.4f}", flush=True)
    best = max(records, key=lambda r: (r["objective"], -r["trial"]))
    return {
        "objective": task.objective,
        "default_params": defaults,
        "default_objective": records[0]["objective"],
        "best_params": best["params"],
        "best_objective": best["objective"],
        "best_trial": best["trial"],
        "trials": records,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def write_config_toml(path: str | Path, cfg: FumConfig, *, force: bool = False, header: str = "") -> Path:
    """Write cfg as TOML (every section and key; loads back with FumConfig.from_toml). Refuses to replace an
    existing file unless force; written to a temporary file and renamed, so a crash leaves no partial file."""
    path = Path(path)
    if path.exists() and not force:
        raise ValueError(f"{path} exists: pass --force (force=True) to overwrite it")

    def lit(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)

    lines = [f"# {line}" for line in header.splitlines()]
    for section, values in cfg.to_dict().items():
        lines += ["", f"[{section}]"] + [f"{k} = {lit(v)}" for k, v in values.items()]
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(lines).lstrip("\n") + "\n")
    tmp.replace(path)
    return path
