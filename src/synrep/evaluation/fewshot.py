"""Few-shot evaluation: N-way K-shot episodes on frozen, l2-normalised features.

StableRep's few-shot protocol (5-way 5-shot episodes) follows Tian et al. 2020, "Rethinking Few-Shot
Image Classification: a Good Embedding Is All You Need?" (ECCV; the same first author), "RFS": a
logistic regression classifier fit on each episode's support set. Their code (WangYueFt/rfs,
``eval/meta_eval.py``, ``meta_test``) l2-normalises support and query features (``is_norm=True``)
and fits ``LogisticRegression(random_state=0, solver='lbfgs', max_iter=1000,
multi_class='multinomial')`` (penalty l2 and C=1.0 by default). Here ``classifier="logistic"`` is
that model with scikit-learn: lbfgs fits the multinomial model for more than two classes without
``multi_class`` (deprecated in scikit-learn 1.5, since removed), l2 with C=1.0 is the default, and
lbfgs is deterministic, so ``random_state`` does not matter. ``few_shot`` fits
that model for all episodes at once (``logistic_episodes``, Newton's method on the same objective;
scikit-learn's ``_logistic`` is the reference it is tested against).
``"prototype"``: the nearest class mean (cosine), the simpler classifier of Prototypical Networks.
The 95% interval is 1.96 standard errors (RFS: Student's t, 1.964 at 600 episodes).
"""

from __future__ import annotations

import math

import numpy as np

from synrep.settings import InputError


def _logistic(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    # lbfgs fits the multinomial model for more than two classes (RFS's multi_class='multinomial')
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000)
    return clf.fit(support, support_labels).predict(query)


def logistic_episodes(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, ways: int,
                      C: float = 1.0, iterations: int = 50) -> np.ndarray:
    """``_logistic`` for a stack of episodes at once (support [E, n, d], labels [E, n], query
    [E, q, d] -> predictions [E, q]): the same model and optimum, written by hand because
    scikit-learn fits one episode at a time (a toy run's 600 episodes: 5 s of its 25).

    The minimiser of sum_i CE(W x_i + b, y_i) + ||W||^2 / (2 C) (scikit-learn's multinomial
    objective, intercept unpenalised) has W = A^T X (A [n, ways]), so Newton's method runs on the
    (n + 1) x ways coefficients of the kernel form (logits = K A + b, K = X X^T, penalty
    tr(A^T K A) / 2 C), batched over episodes in float64, with backtracking; the intercept's
    shift invariance is damped. Predictions agree with scikit-learn's (tests/test_evaluate.py)."""
    import torch

    X = torch.as_tensor(support, dtype=torch.float64)
    Q = torch.as_tensor(query, dtype=torch.float64)
    E, n, _ = X.shape
    Y = torch.nn.functional.one_hot(torch.as_tensor(support_labels, dtype=torch.long), ways).to(torch.float64)
    K = X @ X.transpose(1, 2)
    phi = torch.cat([K, torch.ones(E, n, 1, dtype=torch.float64)], 2)  # [E, n, n+1]
    theta = torch.zeros(E, n + 1, ways, dtype=torch.float64)
    m = (n + 1) * ways
    reg = torch.zeros(E, n + 1, ways, n + 1, ways, dtype=torch.float64)
    reg[:, :n, :, :n, :] = torch.einsum("efg,ck->efcgk", K, torch.eye(ways, dtype=torch.float64)) / C
    reg = reg.reshape(E, m, m) + 1e-9 * torch.eye(m, dtype=torch.float64)

    def objective(theta):
        logits = phi @ theta
        A = theta[:, :n]
        ce = (torch.logsumexp(logits, 2) - (logits * Y).sum(2)).sum(1)
        return ce + 0.5 / C * torch.einsum("efc,efg,egc->e", A, K, A), logits

    value, logits = objective(theta)
    for _ in range(iterations):
        P = torch.softmax(logits, 2)
        grad = phi.transpose(1, 2) @ (P - Y)
        grad[:, :n] += K @ theta[:, :n] / C
        if grad.abs().max() < 1e-9:
            break
        # sum_i phi_i phi_i^T (x) (diag(p_i) - p_i p_i^T), as two batched matrix products
        diagonal = torch.einsum("eif,eic,eig->efcg", phi, P, phi)  # [E, n+1, ways, n+1]
        H = torch.diag_embed(diagonal.permute(0, 1, 3, 2)).permute(0, 1, 3, 2, 4).reshape(E, m, m)
        outer = (phi.unsqueeze(3) * P.unsqueeze(2)).reshape(E, n, m)
        H = H - outer.transpose(1, 2) @ outer + reg
        step = torch.linalg.solve(H, grad.reshape(E, m, 1)).reshape(E, n + 1, ways)
        t = torch.ones(E, 1, 1, dtype=torch.float64)
        for _ in range(30):  # backtracking, per episode
            new_value, new_logits = objective(theta - t * step)
            worse = new_value > value + 1e-12
            if not worse.any():
                break
            t = torch.where(worse[:, None, None], t / 2, t)
        theta, value, logits = theta - t * step, new_value, new_logits
    A, b = theta[:, :n], theta[:, n:]
    return ((Q @ X.transpose(1, 2)) @ A + b).argmax(2).numpy()


def _prototype(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    ways = int(support_labels.max()) + 1
    prototypes = np.stack([support[support_labels == c].mean(0) for c in range(ways)])
    prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
    return (query @ prototypes.T).argmax(1)


def prototype_episodes(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, ways: int) -> np.ndarray:
    return np.stack([_prototype(s, y, q) for s, y, q in zip(support, support_labels, query)])


# episodes [E, n, d] + labels [E, n] + queries [E, q, d] -> predictions [E, q]
CLASSIFIERS = {"logistic": logistic_episodes, "prototype": prototype_episodes}


def few_shot(features: np.ndarray, labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
             seed: int = 0, classifier: str = "logistic") -> dict:
    """N-way K-shot episodes; mean accuracy and its 95% CI over episodes."""
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= shots + queries]
    ways = min(ways, len(classes))
    if ways < 2:
        raise InputError(f"few-shot needs 2 classes with {shots + queries} images each; found {len(classes)}")
    fit = CLASSIFIERS[classifier]
    z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    rng = np.random.default_rng(seed)
    supports, queries_ = [], []
    for e in range(episodes):
        chosen = rng.choice(classes, size=ways, replace=False)
        picks = [rng.choice(by_class[c], size=shots + queries, replace=False) for c in chosen]
        supports.append(np.concatenate([z[p[:shots]] for p in picks]))
        queries_.append(np.concatenate([z[p[shots:]] for p in picks]))
    support_labels, truth = np.repeat(np.arange(ways), shots), np.repeat(np.arange(ways), queries)
    chunk = 200  # episodes a call: bounds the batched Newton system's memory
    predictions = np.concatenate([
        fit(np.stack(supports[i:i + chunk]), np.tile(support_labels, (len(supports[i:i + chunk]), 1)),
            np.stack(queries_[i:i + chunk]), ways)
        for i in range(0, episodes, chunk)])
    accuracies = (predictions == truth).mean(1)
    return {"mean": float(accuracies.mean()),
            "ci95": float(1.96 * accuracies.std(ddof=1) / math.sqrt(episodes)) if episodes > 1 else 0.0,
            "ways": int(ways), "shots": int(shots), "queries": int(queries), "episodes": int(episodes),
            "classifier": classifier}
