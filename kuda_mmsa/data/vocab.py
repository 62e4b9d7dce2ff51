"""The demo vocabulary, shared by the demo generator and the tiny BERT (one place).

BERT-style specials first, then 120 positive, 120 negative and 272 neutral made-up
words (lower-case, no punctuation, so BertTokenizer keeps each one whole): 517 tokens.
"""
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = [f"pos{i:03d}" for i in range(120)]
NEGATIVE = [f"neg{i:03d}" for i in range(120)]
NEUTRAL = [f"neu{i:03d}" for i in range(272)]
TOKENS = SPECIALS + POSITIVE + NEGATIVE + NEUTRAL
TOKEN_TO_ID = {t: i for i, t in enumerate(TOKENS)}
VOCAB_SIZE = len(TOKENS)
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
