#!/usr/bin/env node
// Writes a small random model folder in the Hugging Face layout (config.json,
// safetensors weights, tokenizer.json, ...) for tests and the demo; the logic
// is lib/test-model.ts, used here through dist/ (`npm run build:ts` first).
//
//   node scripts/make-test-model.js --out /tmp/tiny --arch qwen2 --dtype bfloat16 --shards 2
//   node scripts/make-test-model.js --out /tmp/tiny-awq --hidden 128 --intermediate 256 --awq --group-size 64
'use strict';
const path = require('node:path');
const { Command, InvalidArgumentError } = require('commander');

const dist = path.resolve(__dirname, '..', 'dist');

function integer(text) {
  const value = Number(text);
  if (text.trim() === '' || !Number.isSafeInteger(value)) throw new InvalidArgumentError(`expected an integer, got ${JSON.stringify(text)}`);
  return value;
}

function number(text) {
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value)) throw new InvalidArgumentError(`expected a number, got ${JSON.stringify(text)}`);
  return value;
}

const program = new Command('make-test-model')
  .description('write a small random Llama / Mistral / Qwen2 model folder in the Hugging Face layout')
  .requiredOption('--out <dir>', 'the folder to write')
  .option('--arch <arch>', 'llama | mistral | qwen2', 'llama')
  .option('--hidden <n>', 'hidden_size', integer, 64)
  .option('--layers <n>', 'num_hidden_layers', integer, 2)
  .option('--heads <n>', 'num_attention_heads', integer, 4)
  .option('--kv-heads <n>', 'num_key_value_heads', integer, 2)
  .option('--head-dim <n>', 'head_dim (default hidden / heads, then not written to config.json)', integer)
  .option('--intermediate <n>', 'intermediate_size', integer, 128)
  .option('--vocab <n>', 'vocab_size (the tokenizer has exactly this many ids)', integer, 512)
  .option('--dtype <dtype>', 'float32 | float16 | bfloat16', 'float32')
  .option('--tie', 'tie_word_embeddings (no lm_head.weight)', false)
  .option('--sliding-window <n>', 'sliding_window (mistral)', integer)
  .option('--rope-scaling <type>', 'llama3 | linear')
  .option('--rope-theta <theta>', 'rope_theta (default by architecture)', number)
  .option('--max-position-embeddings <n>', 'max_position_embeddings', integer, 2048)
  .option('--shards <n>', 'number of safetensors files (more than 1 writes an index)', integer, 1)
  .option('--seed <n>', 'random seed', integer, 0)
  .option('--init-std <std>', 'standard deviation of the random weights', number, 0.02)
  .option('--awq', 'quantize to AWQ int4 (AutoAWQ GEMM checkpoint) with the quantizer', false)
  .option('--group-size <n>', 'AWQ group size: 32, 64, 128 or -1 (default: the largest that divides every layer)', integer)
  .option('--json', 'print the description of the model as JSON', false);

async function main() {
  program.parse();
  const o = program.opts();
  if (o.groupSize !== undefined && !o.awq) program.error('make-test-model: --group-size goes with --awq');
  let lib;
  try {
    lib = require(path.join(dist, 'test-model.js'));
  } catch (error) {
    console.error(`make-test-model: cannot load ${path.join(dist, 'test-model.js')} (run \`npm run build:ts\` first): ${error.message}`);
    process.exit(1);
  }
  const model = await lib.makeTestModel({
    out: path.resolve(o.out),
    arch: o.arch,
    hidden: o.hidden,
    layers: o.layers,
    heads: o.heads,
    kvHeads: o.kvHeads,
    headDim: o.headDim,
    intermediate: o.intermediate,
    vocab: o.vocab,
    dtype: o.dtype,
    tie: o.tie,
    slidingWindow: o.slidingWindow,
    ropeScaling: o.ropeScaling,
    ropeTheta: o.ropeTheta,
    maxPositionEmbeddings: o.maxPositionEmbeddings,
    shards: o.shards,
    seed: o.seed,
    initStd: o.initStd,
    awq: o.awq ? { groupSize: o.groupSize } : undefined,
  });
  if (o.json) {
    console.log(JSON.stringify(model));
  } else {
    const count = Object.keys(model.tensors).length;
    const kind = model.awq ? `AWQ int4, group size ${model.awq.groupSize}` : o.dtype;
    console.log(`wrote ${model.config.architectures[0]} (${kind}, ${count} tensors) to ${model.dir}: ${model.files.join(', ')}`);
  }
}

main().catch((error) => {
  console.error(error && error.code ? `${error.code}: ${error.message}` : error);
  process.exit(1);
});
