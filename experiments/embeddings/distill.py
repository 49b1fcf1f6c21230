"""Distil static token vectors from all-MiniLM-L6-v2 (model2vec recipe), plain numpy.
For every WordPiece vocab id t: run the 6-layer encoder on [CLS] t [SEP] (length 3, no padding needed) and keep
  mean : mean-pooled output over the 3 positions (what sentence-transformers' pooling would give for a 1-token text)
  tok  : the output at t's own position
Also saves the model's raw input embedding table (word_embeddings) as a no-distillation control.
Writes $EMB_DIR/static_{mean,tok,input}.npy  (30522 x 384 float32)."""
import sys, time, numpy as np
import minilm_np as M   # loads weights + tokenizer from $EMB_DIR/pkgs/minilm/model
W = M.W
V = W['embeddings.word_embeddings.weight'].shape[0]
CLS, SEP = M.tok.token_to_id('[CLS]'), M.tok.token_to_id('[SEP]')
def forward(ids):
    B, T = ids.shape
    x = W['embeddings.word_embeddings.weight'][ids] + W['embeddings.position_embeddings.weight'][:T][None] + W['embeddings.token_type_embeddings.weight'][0]
    x = M.ln(x, W['embeddings.LayerNorm.weight'], W['embeddings.LayerNorm.bias'])
    for l in range(M.L):
        p = f'encoder.layer.{l}.'
        q = M.lin(x, p + 'attention.self.query').reshape(B, T, M.NH, M.HD).transpose(0, 2, 1, 3)
        k = M.lin(x, p + 'attention.self.key').reshape(B, T, M.NH, M.HD).transpose(0, 2, 1, 3)
        v = M.lin(x, p + 'attention.self.value').reshape(B, T, M.NH, M.HD).transpose(0, 2, 1, 3)
        a = q @ k.transpose(0, 1, 3, 2) / float(np.sqrt(M.HD))
        a = np.exp(a - a.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
        c = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, M.H)
        x = M.ln(M.lin(c, p + 'attention.output.dense') + x, W[p + 'attention.output.LayerNorm.weight'], W[p + 'attention.output.LayerNorm.bias'])
        h = M.gelu(M.lin(x, p + 'intermediate.dense'))
        x = M.ln(M.lin(h, p + 'output.dense') + x, W[p + 'output.LayerNorm.weight'], W[p + 'output.LayerNorm.bias'])
    return x
if __name__ == '__main__':
    # sanity: the batched forward equals minilm_np.encode_batch on a real 1-token text
    t = 'cat'; e1 = M.encode_batch([t])[0]; tid = M.tok.encode(t).ids; assert len(tid) == 3, tid
    x = forward(np.array([tid])); e2 = x.mean(1)[0]; e2 /= np.linalg.norm(e2)
    print('check vs encode_batch: max abs diff %.2e' % np.abs(e1 - e2).max())
    mean = np.zeros((V, M.H), np.float32); own = np.zeros((V, M.H), np.float32)
    bs = 512; t0 = time.time()
    for s in range(0, V, bs):
        ids = np.arange(s, min(V, s + bs))
        seq = np.stack([np.full(len(ids), CLS), ids, np.full(len(ids), SEP)], 1)
        x = forward(seq)
        mean[ids] = x.mean(1); own[ids] = x[:, 1]
        if (s // bs) % 10 == 0: print(s, V, round(time.time() - t0, 1), flush=True)
    print('distilled %d tokens in %.1f s' % (V, time.time() - t0))
    np.save(M.OUT + 'static_mean.npy', mean); np.save(M.OUT + 'static_tok.npy', own)
    np.save(M.OUT + 'static_input.npy', W['embeddings.word_embeddings.weight'].astype(np.float32))
