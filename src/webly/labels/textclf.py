"""A keyword-only linear classifier: what an image's own text says about its class.

Two uses. (1) The keyword audit: trained out-of-fold on the noisy labels and scored against
whatever truth exists, its balanced accuracy measures how much the WT-Set's keywords say about
the images (a text rule that helps raises it). (2) Text as a check on the label: a title that
names another class than the label is evidence the label is wrong, and `webly pseudo-label
--text` combines these probabilities with the image models' (webly.inference.pseudolabel).

The model is multinomial logistic regression on binary keyword indicators (softmax of X W + b),
fitted full-batch with L-BFGS and an L2 penalty: convex, so the answer does not depend on a seed,
and a few seconds for 30k images x a few thousand keywords. Out-of-fold: the rows are cut into k
folds by `webly.data.folds.fold_of` (the same fold of a row everywhere); the model that did not
see a row's label predicts it, so a label cannot vouch for itself. A row without any keyword gets
the uniform distribution (the text says nothing), not the class prior.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from webly.data.folds import fold_of


def _sparse(x: sp.csr_matrix) -> torch.Tensor:
    coo = x.tocoo().astype(np.float32)
    index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(index, torch.from_numpy(coo.data), size=x.shape,
                                   check_invariants=False).coalesce()


def fit(x: sp.csr_matrix, y: np.ndarray, num_classes: int, l2: float = 1e-3,
        iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(W [V, C], b [C]) of L2-regularised softmax regression on rows with a label (y >= 0).
    `l2` is per training image (the penalty is l2/2 |W|^2 added to the mean loss)."""
    keep = y >= 0
    xs, ys = _sparse(x[keep]), torch.from_numpy(y[keep].astype(np.int64))
    W = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=iters, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ W + b, ys) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    if keep.any():
        with torch.enable_grad():
            opt.step(closure)
    return W.detach().numpy(), b.detach().numpy()


def predict_proba(x: sp.csr_matrix, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Class probabilities [N, C] (float32); rows without keywords: uniform."""
    logits = np.asarray(x.astype(np.float32) @ W) + b
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    empty = np.diff(x.tocsr().indptr) == 0
    p[empty] = 1.0 / W.shape[1]
    return p.astype(np.float32)


def out_of_fold(x: sp.csr_matrix, y: np.ndarray, rows: np.ndarray, num_classes: int,
                folds: int = 5, l2: float = 1e-3) -> np.ndarray:
    """Probabilities [N, C] for every row of `x`, each from the model fitted without its fold
    (`rows`: the manifest row numbers of x's rows, which fix the folds)."""
    x = x.tocsr()
    fold = fold_of(rows, folds)
    out = np.zeros((x.shape[0], num_classes), np.float32)
    for f in range(folds):
        test = fold == f
        W, b = fit(x[~test], np.where(test, -1, y)[~test], num_classes, l2)
        out[test] = predict_proba(x[test], W, b)
    return out


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean over classes present in `truth` of the share of their rows predicted right."""
    right = np.bincount(truth[pred == truth], minlength=num_classes)
    total = np.bincount(truth, minlength=num_classes)
    present = total > 0
    return float((right[present] / total[present]).mean()) if present.any() else 0.0


def audit(x: sp.csr_matrix, noisy: np.ndarray, truth: np.ndarray, rows: np.ndarray,
          num_classes: int, folds: int = 5) -> dict[str, float]:
    """The keyword audit: a keyword-only classifier trained out-of-fold on the noisy labels,
    scored against `truth` (balanced and plain top-1, %), with the share of rows that have any
    keyword (those without are a uniform guess)."""
    p = out_of_fold(x, noisy, rows, num_classes, folds)
    pred = p.argmax(1)
    has = np.diff(x.tocsr().indptr) > 0
    return {"balanced_top1": round(100 * balanced_accuracy(pred, truth, num_classes), 2),
            "top1": round(100 * float((pred == truth).mean()), 2),
            "images_with_keywords": round(100 * float(has.mean()), 2)}
