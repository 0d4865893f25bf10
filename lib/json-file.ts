/**
 * Strict JSON for model folders: the JSON files of a Hugging Face model
 * folder (config.json, model.safetensors.index.json, tokenizer.json, ...) and
 * safetensors headers are read here, and every problem is an
 * `ERR_MODEL_FORMAT` error whose message starts with the file's path.
 *
 * `JSON.parse` keeps the last of two equal keys without a word; a checkpoint
 * that names a tensor twice is ambiguous, so {@link findDuplicateKey} looks for
 * them (formats.md §5.1: "a strict loader should reject them explicitly").
 *
 * @example
 * const config = await readJsonObject('/models/llama/config.json');  // a plain object, or ModelFormatError
 */
import * as fs from 'node:fs';

import { ModelFormatError } from './errors';

export type JsonObject = Record<string, unknown>;

/** `value` is a JSON object (not an array, not null). */
export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The first key that appears twice in one object of `text`, with the keys of
 * the objects that enclose it (outermost first), or null. `text` must be valid
 * JSON (parse it first): the scan only follows strings and brackets.
 */
export function findDuplicateKey(text: string): { key: string; path: string[] } | null {
  // One frame per open object or array; arrays have no key set.
  interface Frame {
    keys: Set<string> | null;
    expectKey: boolean;
    lastKey: string | null;
  }
  const stack: Frame[] = [];
  const path = (): string[] => stack.slice(0, -1).map((f) => f.lastKey ?? '[]');
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let end = i + 1;
      while (text.charCodeAt(end) !== 0x22) end += text.charCodeAt(end) === 0x5c /* \ */ ? 2 : 1;
      const top = stack[stack.length - 1];
      if (top?.keys && top.expectKey) {
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        if (top.keys.has(key)) return { key, path: path() };
        top.keys.add(key);
        top.lastKey = key;
        top.expectKey = false;
      }
      i = end;
    } else if (c === 0x7b /* { */) {
      stack.push({ keys: new Set(), expectKey: true, lastKey: null });
    } else if (c === 0x5b /* [ */) {
      stack.push({ keys: null, expectKey: false, lastKey: null });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top?.keys) top.expectKey = true;
    }
  }
  return null;
}

/**
 * Parses `text` (the contents of `file`) as a JSON object with no duplicate
 * keys; `what` describes the file in messages ("tokenizer", "safetensors header").
 */
export function parseJsonObject(text: string, file: string, what = 'JSON'): JsonObject {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ModelFormatError(`${file}: invalid ${what}: ${(error as Error).message}`, { cause: error });
  }
  if (!isJsonObject(value)) {
    const kind = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    throw new ModelFormatError(`${file}: invalid ${what}: expected a JSON object, got ${kind}`);
  }
  const duplicate = findDuplicateKey(text);
  if (duplicate) {
    const where = duplicate.path.length ? ` in ${duplicate.path.map((k) => JSON.stringify(k)).join(' > ')}` : '';
    throw new ModelFormatError(`${file}: invalid ${what}: key ${JSON.stringify(duplicate.key)} appears twice${where}`);
  }
  return value;
}

/** Reads `file` (UTF-8) and parses it as a JSON object; a missing or unreadable file is ERR_MODEL_FORMAT too. */
export async function readJsonObject(file: string, what = 'JSON'): Promise<JsonObject> {
  let text: string;
  try {
    text = await fs.promises.readFile(file, 'utf8');
  } catch (error) {
    throw new ModelFormatError(`${file}: cannot read the file: ${(error as Error).message}`, { cause: error });
  }
  return parseJsonObject(text, file, what);
}

/** Like {@link readJsonObject}, or `null` when `file` does not exist. */
export async function readOptionalJsonObject(file: string, what = 'JSON'): Promise<JsonObject | null> {
  try {
    await fs.promises.access(file);
  } catch {
    return null;
  }
  return readJsonObject(file, what);
}
