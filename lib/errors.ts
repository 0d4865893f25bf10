/**
 * Errors with stable codes (DESIGN.md §6). Every error pagedllm throws or
 * rejects with is a {@link PagedLLMError}; switch on `error.code`, which never
 * changes between versions, rather than on the message.
 *
 * @example
 * try { tensor.reshape([3, 5]); } catch (e) {
 *   if (e instanceof PagedLLMError && e.code === 'ERR_INVALID_ARGUMENT') { ... }
 * }
 */
export type ErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_UNSUPPORTED'
  | 'ERR_OUT_OF_MEMORY'
  | 'ERR_DISPOSED'
  | 'ERR_MODEL_FORMAT'
  | 'ERR_CUDA'
  | 'ERR_ABORTED'
  | 'ERR_NO_BACKEND'
  /** A bug in pagedllm: an unexpected native exception, reported instead of crashing. */
  | 'ERR_INTERNAL';

export class PagedLLMError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Wrong type, shape, dtype, device or value passed by the caller. */
export class InvalidArgumentError extends PagedLLMError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_INVALID_ARGUMENT', message, options);
  }
}
/** A valid request this build or device cannot serve (e.g. CUDA without a GPU). */
export class UnsupportedError extends PagedLLMError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_UNSUPPORTED', message, options);
  }
}
export class OutOfMemoryError extends PagedLLMError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_OUT_OF_MEMORY', message, options);
  }
}
/** The object was used after `dispose()`. */
export class DisposedError extends PagedLLMError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_DISPOSED', message, options);
  }
}
export class ModelFormatError extends PagedLLMError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_MODEL_FORMAT', message, options);
  }
}
export class CudaError extends PagedLLMError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CUDA', message, options);
  }
}
export class AbortedError extends PagedLLMError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_ABORTED', message, options);
  }
}
/** No native binary could be loaded (see the message for what was tried). */
export class NoBackendError extends PagedLLMError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_NO_BACKEND', message, options);
  }
}
export class InternalError extends PagedLLMError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_INTERNAL', message, options);
  }
}

const byCode: Record<ErrorCode, new (message: string) => PagedLLMError> = {
  ERR_INVALID_ARGUMENT: InvalidArgumentError,
  ERR_UNSUPPORTED: UnsupportedError,
  ERR_OUT_OF_MEMORY: OutOfMemoryError,
  ERR_DISPOSED: DisposedError,
  ERR_MODEL_FORMAT: ModelFormatError,
  ERR_CUDA: CudaError,
  ERR_ABORTED: AbortedError,
  ERR_NO_BACKEND: NoBackendError,
  ERR_INTERNAL: InternalError,
};

/** The error class for `code` (used by the binding to throw our classes from C++). */
export function errorFromCode(code: string, message: string): PagedLLMError {
  const ErrorClass = byCode[code as ErrorCode] ?? InternalError;
  return new ErrorClass(message);
}
