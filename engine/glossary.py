"""One-sentence explanations of every concept the explorer shows, and how to read each metric.

Plain text, shared by the app's help texts and the command line.
"""
import re

CONCEPTS = {
    "rank": "The number of independent directions a weight matrix keeps: a rank-r layer stores two thin "
            "factors A (out x r) and B (r x in) instead of the full out x in matrix.",
    "rank_ratio": "Rank as a fraction of each layer's full rank (the smaller of its two sides); 1 keeps the "
                  "layer dense.",
    "singular_value": "How much a matrix stretches along one of its independent directions; truncated SVD keeps "
                      "the largest ones and drops the rest.",
    "energy_kept": "The share of the sum of squared singular values kept at a rank: 1 minus the squared relative "
                   "error of the truncated matrix.",
    "break_even_rank": "The rank r at which the factors hold as many values as the dense matrix, r(m+n) = mn; "
                       "above it low rank costs memory instead of saving it.",
    "bits": "How many bits code each stored weight: 2^b levels between the smallest and largest value of a group "
            "(16 = no quantization, kept as fp16).",
    "group_size": "How many consecutive input weights share one scale: smaller groups follow the weights more "
                  "closely but store more scales.",
    "scale": "The fp16 step size that turns a group's integer codes back into weights (code x scale).",
    "symmetric": "Symmetric codes are centred on zero with one scale per group; asymmetric adds a zero-point per "
                 "group to fit lopsided ranges.",
    "sparsity": "The fraction of stored weights set to zero (smallest magnitudes first); zeros need a mask or "
                "index to be skipped.",
    "prune_heads": "Structured pruning of attention: whole heads removed from every block (with grouped-query "
                   "attention a key/value head with the query heads that read it), so q, k, v and o become "
                   "smaller dense matrices; the least important go first.",
    "prune_channels": "Structured pruning of the MLP: whole intermediate channels removed (the same channel "
                      "from gate, up and down), so the MLP is a narrower dense one.",
    "prune_blocks": "Whole transformer blocks removed (ShortGPT): the blocks whose output is most like their "
                    "input go first; the model keeps its width and loses depth.",
    "structure_importance": "What ranks the heads, channels and blocks to remove: their output change on the "
                            "calibration text (blocks: 1 - cosine of their input and output, ShortGPT's block "
                            "influence), or the size of their weights alone.",
    "schedule": "Gradual pruning (Distiller's automated gradual pruner): the pruned share rises to its target "
                "over N steps as 1 - (1 - t/N)^3, fast first and slowly at the end, with distillation after "
                "each step, so each step prunes weights the training has adapted; the last step is the recipe.",
    "nm": "N:M sparsity keeps N weights in every M consecutive ones (2:4 keeps half), a pattern GPUs can run "
          "fast; its index costs log2(M) bits per kept weight.",
    "layer_group": "Which layers the controls apply to: all, the attention projections, the MLP "
                   "(feed-forward) layers of each transformer block, or in a mixture-of-experts model its "
                   "routed experts or its routers, optionally narrowed by a name filter. Routers stay at "
                   "16 bits unless chosen here or named by the filter.",
    "perplexity": "How surprised the model is by held-out text: exp of the mean negative log-likelihood per "
                  "token; lower is better, and a model that guesses uniformly over V tokens scores V.",
    "kl_to_original": "KL divergence of the compressed model's next-token distribution from the original's, in "
                      "nats: 0 means identical predictions.",
    "top1_agreement": "The fraction of positions where both models' most likely next token is the same.",
    "cosine_to_original": "Mean cosine similarity between each text's embedding under the compressed and the "
                          "original model: 1 means the same direction.",
    "lee_spearman": "Spearman correlation between embedding similarities and human similarity ratings of 50 "
                    "news articles (Lee et al. 2005): higher means closer to human judgement.",
    "polarity_accuracy": "Accuracy on 200 movie-review sentences of a sentiment classifier fitted on the original "
                         "embeddings and applied to the compressed ones.",
    "polarity_precision": "Of the sentences the sentiment classifier calls positive, the share that are (and the "
                          "same for negative), averaged over the two classes.",
    "polarity_recall": "Of the positive sentences, the share the sentiment classifier finds (and the same for "
                       "negative), averaged over the two classes.",
    "polarity_f1": "F1 of the sentiment classifier: the harmonic mean of precision and recall of each class, "
                   "averaged over the two classes.",
    "label_agreement": "The fraction of texts where the compressed classifier predicts the original's label.",
    "label_precision": "Of the texts the compressed classifier gives a label, the share the original gives it too, "
                       "averaged over the labels (macro).",
    "label_recall": "Of the texts the original gives a label, the share the compressed classifier gives it too, "
                    "averaged over the labels (macro).",
    "label_f1": "F1 of the compressed classifier against the original's labels: the harmonic mean of each label's "
                "precision and recall, averaged over the labels (macro).",
    "relative_error": "||W - W_hat|| / ||W|| (Frobenius) of a layer's stored weight: 0 is exact.",
    "sqnr_db": "Signal-to-quantization-noise ratio of a layer's weight, 10 log10(||W||^2 / ||W - W_hat||^2) dB: "
               "about 6 dB per bit.",
    "lowrank_method": "SVD truncates the weight's own spectrum; whitened SVD truncates the spectrum of the "
                      "weight times the whitened calibration inputs, so it keeps what matters for the outputs "
                      "(same rank, same bytes).",
    "share_blocks": "Shared basis (Basis Sharing, 2024): the layers of one kind in this many neighbouring blocks "
                    "share one whitened basis B, stored once, and keep their own coefficients A_i; the basis rank "
                    "is chosen so that a group stores no more than per-layer whitened SVD at the same rank.",
    "prune_method": "Magnitude drops the smallest |W| of the whole matrix; Wanda drops the smallest |W| x input "
                    "column norm within each output row (same count, same bytes); SparseGPT goes column by column "
                    "as GPTQ does, zeroes what matters least to the outputs and moves what it held onto the "
                    "weights not yet reached, through the input statistics (same count, same bytes).",
    "quant_method": "RTN rounds every weight to its nearest level; GPTQ rounds column by column and pushes each "
                    "rounding error onto the columns not yet rounded, weighted by the input statistics (same "
                    "grid, same bytes); k-means replaces the weights by 2^b shared values found per layer, "
                    "stored as b-bit indices plus a codebook; the importance matrix (llama.cpp's imatrix) weights "
                    "llama.cpp's own search for each block's scale by each input's mean square on the "
                    "calibration text; HQQ fits each group's scale and zero-point to the weights by "
                    "half-quadratic optimization, letting outliers keep their error (no calibration; same grid, "
                    "same bytes); AWQ multiplies each input column by its input magnitude to a searched power "
                    "before rounding, so the weights that meet large inputs round finer, and stores those "
                    "column scales (fp16 per input).",
    "number_format": "How codes become numbers: the explorer's own integer grid (bits, scales per tensor, "
                     "channel or group, optional zero-point), or one of llama.cpp's GGML types, which fix the "
                     "blocks themselves: q4_0 to q8_0 keep an fp16 scale (and minimum) per 32 values; the "
                     "k-quants q2_k to q6_k quantize the scales of 16- or 32-value sub-blocks against one fp16 "
                     "scale per 256 values, searched to fit; mxfp4 (OCP microscaling, as llama.cpp stores it) keeps "
                     "4-bit E2M1 floats (0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives) with one power-of-two "
                     "scale per 32 values; or a float format others ship: nf4 and fp4 (bitsandbytes, QLoRA), "
                     "fp8_e4m3 and fp8_e5m2 (per output channel), nvfp4 (NVIDIA).",
    "double_quant": "QLoRA's double quantization: the fp32 scale of each 64-value block of nf4 or fp4, minus "
                    "their mean, is itself stored as an 8-bit code with one fp32 scale per 256 blocks: 4.127 "
                    "bits per value instead of 4.5.",
    "act_order": "GPTQ only: round the columns with the largest inputs first, while the most columns remain to "
                 "absorb their error.",
    "distillation": "Recovery after compression: the compressed layers' stored values are trained to make the "
                    "model's outputs match the uncompressed model's on the calibration text, keeping every mask, "
                    "rank and quantization grid, so the bytes do not change.",
    "calibration": "A small set of real text, separate from the evaluation text, run once through the model to "
                   "record each layer's input statistics for Wanda, whitened SVD and GPTQ.",
    "kv_cache": "The keys and values of every past token, kept per layer so generation does not recompute them: "
                "2 x layers x kv heads x head dim x bytes per token, growing with batch and context.",
    "weight_sharing": "Weight sharing (k-means): the layer keeps 2^b shared values, its codebook, found by "
                      "clustering its weights; each weight stores only the b-bit index of its nearest shared "
                      "value.",
    "entropy_coding": "Entropy coding: codes that occur often get short bit strings and rare ones long "
                      "(Huffman), so a layer whose codes cluster near zero takes fewer bits per value than its "
                      "fixed width, exactly, with nothing lost.",
    "low_rank": "Low rank replaces an m x n matrix by the product of an m x r and an r x n factor, keeping its r "
                "largest singular directions: r(m + n) values instead of mn.",
    "pareto": "The Pareto frontier: settings no other setting beats on both memory and quality at once.",
}

# One line per float format (engine.formats.floats), beside the number-format control
FORMAT_NOTES = {
    "nf4": "NF4 (bitsandbytes, QLoRA): 16 levels at the quantiles of a normal distribution times each 64-value "
           "block's fp32 absmax: 4.5 bits per value.",
    "fp4": "FP4 (E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives) times each 64-value block's fp32 absmax / 6, "
           "bitsandbytes' 4-bit layout: 4.5 bits per value.",
    "fp8_e4m3": "FP8 E4M3 (4 exponent, 3 mantissa bits, up to 448) times one fp32 scale per output channel, as "
                "compressed-tensors and vLLM ship FP8 weights: 8 bits per value + 4 bytes a row.",
    "fp8_e5m2": "FP8 E5M2 (5 exponent, 2 mantissa bits, up to 57344: more range, less precision) times one fp32 "
                "scale per output channel: 8 bits per value + 4 bytes a row.",
    "nvfp4": "NVFP4 (NVIDIA): E2M1 values in 16-value blocks, each block's scale in E4M3 (1 byte), and one fp32 "
             "scale per tensor: 4.5 bits per value + 4 bytes.",
}

# metric -> True when higher is better
HIGHER_IS_BETTER = {
    "perplexity": False, "kl_to_original": False, "top1_agreement": True, "cosine_to_original": True,
    "lee_spearman": True, "polarity_accuracy": True, "polarity_precision": True, "polarity_recall": True,
    "polarity_f1": True, "label_agreement": True, "label_precision": True, "label_recall": True, "label_f1": True,
}

# metric -> its name for people: what a label, an axis, a column header or a sentence shows. The keys
# stay the keys in what is written for machines (JSON, CSV, the results' dicts).
METRIC_NAMES = {
    "perplexity": "Perplexity",  # language models (causal and seq2seq)
    "kl_to_original": "KL divergence to the original",  # language models and classifiers
    "top1_agreement": "Top-1 agreement with the original",
    "cosine_to_original": "Cosine to the original",  # encoders
    "lee_spearman": "Similarity to human ratings (Spearman)",
    "polarity_accuracy": "Sentiment accuracy",
    "polarity_precision": "Sentiment precision (macro)",
    "polarity_recall": "Sentiment recall (macro)",
    "polarity_f1": "Sentiment F1 (macro)",
    "label_agreement": "Label agreement with the original",  # classifiers
    "label_precision": "Precision against the original's labels (macro)",
    "label_recall": "Recall against the original's labels (macro)",
    "label_f1": "F1 against the original's labels (macro)",
}


def metric_name(key: str, in_sentence: bool = False) -> str:
    """A metric's name for people (a key it does not know, as it is); `key_low` and `key_high`,
    the ends of its 95% interval. In a sentence its first letter is lower case (KL stays).

    >>> metric_name("lee_spearman"), metric_name("perplexity_low"), metric_name("top1_agreement", True)
    ('Similarity to human ratings (Spearman)', 'Perplexity, 95% low', 'top-1 agreement with the original')
    >>> metric_name("kl_to_original", in_sentence=True), metric_name("compressed_bytes")
    ('KL divergence to the original', 'compressed_bytes')
    """
    for end in ("_low", "_high"):
        if key.endswith(end) and key[:-len(end)] in METRIC_NAMES:
            return f"{metric_name(key[:-len(end)], in_sentence)}, 95% {end[1:]}"
    name = METRIC_NAMES.get(key, key)
    return name[0].lower() + name[1:] if in_sentence and name[1:2].islower() else name

def with_metric_names(text: str) -> str:
    """`text` (a sentence the engine wrote for its protocol, say) for people: each metric key in
    it written as the metric's name, without the names of the interval's JSON fields.

    >>> with_metric_names("cosine_to_original on 64 items, with a 95% interval (`<metric>_low`, `<metric>_high`)")
    'cosine to the original on 64 items, with a 95% interval'
    """
    text = re.sub(r"\s*\(`<metric>_low`, `<metric>_high`\)", "", text)
    return re.sub(r"\b(" + "|".join(METRIC_NAMES) + r")\b", lambda m: metric_name(m.group(1), True), text)


# The formulas beside the Inside-a-layer page's pictures (LaTeX, one aligned line per step, so a
# narrow column shows them whole)
FORMULAS = {
    "symmetric": r"""\begin{aligned} s &= \max_i |w_i| \,/\, (2^{b-1} - 1) \\
q_i &= \mathrm{clamp}\big(\lfloor w_i / s \rceil,\ -2^{b-1},\ 2^{b-1} - 1\big) \\
\hat w_i &= s\,q_i \end{aligned}""",
    "asymmetric": r"""\begin{aligned} s &= \big(\max(w, 0) - \min(w, 0)\big) \,/\, (2^b - 1) \\
z &= \lfloor -\min(w, 0) / s \rceil \\
q_i &= \mathrm{clamp}\big(\lfloor w_i / s \rceil + z,\ 0,\ 2^b - 1\big) \\
\hat w_i &= s\,(q_i - z) \end{aligned}""",
    "low_rank": r"""\begin{aligned} W &\approx A B \\
A &= U_r \Sigma_r,\quad B = V_r^\top \\
\text{values} &= r(m + n) \ \text{ against } \ mn \\
\frac{\|W - AB\|_F^2}{\|W\|_F^2} &= 1 - \frac{\sum_{k \le r} \sigma_k^2}{\sum_k \sigma_k^2} \end{aligned}""",
    "magnitude": r"""\begin{aligned} \text{keep}_{ij} &= \big[\, |W_{ij}| \ge \tau \,\big] \\
\tau &= \text{the } \lceil s\,mn \rceil\text{-th smallest } |W_{ij}| \end{aligned}""",
    "wanda": r"""\begin{aligned} S_{ij} &= |W_{ij}| \cdot \|X_{:,j}\|_2 \\
\text{keep} &: \text{the largest } S_{ij} \text{ of each row } i \end{aligned}""",
    "sparsegpt": r"""\begin{aligned} S_{ij} &= W_{ij}^2 \,/\, [H^{-1}]_{jj}^2 \ \text{(per block of columns)} \\
\delta_{i,>j} &= -\frac{W_{ij}}{[H^{-1}]_{jj}}\,[H^{-1}]_{j,>j} \ \text{for each pruned } W_{ij} \end{aligned}""",
    "kmeans": r"""\begin{aligned} &\min_{c_1 \ldots c_{2^b}} \textstyle\sum_i \min_k (w_i - c_k)^2 \\
&\hat w_i = c_{k(i)},\quad k(i) = \arg\min_k |w_i - c_k| \end{aligned}""",
    "entropy": r"""\begin{aligned} H &= -\textstyle\sum_k p_k \log_2 p_k \\
H \le \bar L_{\mathrm{Huffman}} &= \textstyle\sum_k p_k \ell_k < H + 1 \\
\bar L_{\mathrm{Huffman}} &\le b \end{aligned}""",
}
