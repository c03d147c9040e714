"""Steering: the steer() context manager, generation, α/layer sweeps and evaluations.

Paper sections: the intervention and its positions (paper_method A6, appendix P.3), the
sentiment evaluation (A7 §4.1, appendix N, judge prompt O.2), the layer sweep and its OLS slopes
(A10, appendix D) and the judges (A11, appendix O).

    from welfare_lens.steering import steer, generate, evaluate_sentiment, sweep

    with steer(model, vectors, layer=20, alpha=2.0, name="gold") as record:
        table = evaluate_sentiment(model, samples=4, max_new_tokens=64)
"""

from welfare_lens.steering.backtracking import (
    backtracking_rate,
    classify_backtracking,
    evaluate_backtracking,
    load_arithmetic_problems,
)
from welfare_lens.steering.confidence import (
    evaluate_confidence,
    evaluate_mcq_confidence,
    load_mcq,
    load_truefalse_questions,
    p_true,
)
from welfare_lens.steering.generate import Generation, GenerationStats, generate, stop_token_ids
from welfare_lens.steering.incoherence import (
    compress_trailing_loop,
    incoherence_score,
    is_incoherent,
    mask_incoherent,
)
from welfare_lens.steering.judge import (
    SENTIMENT_JUDGE_PROMPT,
    JudgeVerdict,
    LMJudge,
    parse_sentiment_score,
)
from welfare_lens.steering.pre_existence import (
    EVALUATIONS,
    EvaluateFn,
    PreExistenceResult,
    default_evaluation,
    pre_existence,
)
from welfare_lens.steering.refusal import (
    classify_refusal,
    evaluate_refusal,
    load_refusal_prompts,
    refusal_rate,
)
from welfare_lens.steering.sentiment import (
    SentimentPrompt,
    evaluate_sentiment,
    sentiment_prompts,
    vader_score,
)
from welfare_lens.steering.steer import (
    SteeringRecord,
    SteeringSpec,
    active_steering,
    assistant_positions,
    condition_fields,
    norm_matched_alpha,
    resolve_vector,
    steer,
    steer_many,
    unsteered,
)
from welfare_lens.steering.sweep import COLUMNS, ResultTable, Slope, ols_slope, slopes_by, sweep

__all__ = [
    "COLUMNS",
    "EVALUATIONS",
    "SENTIMENT_JUDGE_PROMPT",
    "EvaluateFn",
    "Generation",
    "GenerationStats",
    "JudgeVerdict",
    "LMJudge",
    "PreExistenceResult",
    "ResultTable",
    "SentimentPrompt",
    "Slope",
    "SteeringRecord",
    "SteeringSpec",
    "active_steering",
    "assistant_positions",
    "backtracking_rate",
    "classify_backtracking",
    "classify_refusal",
    "compress_trailing_loop",
    "condition_fields",
    "default_evaluation",
    "evaluate_backtracking",
    "evaluate_confidence",
    "evaluate_mcq_confidence",
    "evaluate_refusal",
    "evaluate_sentiment",
    "generate",
    "incoherence_score",
    "is_incoherent",
    "load_arithmetic_problems",
    "load_mcq",
    "load_refusal_prompts",
    "load_truefalse_questions",
    "mask_incoherent",
    "norm_matched_alpha",
    "ols_slope",
    "p_true",
    "parse_sentiment_score",
    "pre_existence",
    "refusal_rate",
    "resolve_vector",
    "sentiment_prompts",
    "slopes_by",
    "steer",
    "steer_many",
    "stop_token_ids",
    "sweep",
    "unsteered",
    "vader_score",
]
