/**
 * Streams and events (DESIGN.md §2). Work enqueued on a stream runs in order;
 * enqueuing returns at once, and only `await` points wait — without blocking
 * the event loop. A CPU stream is a native worker thread; a CUDA stream is a
 * CUDA stream.
 *
 * @example
 * const copy = Stream.create('cpu');
 * const ready = Stream.default('cpu').record();
 * copy.wait(ready);           // later work on `copy` waits for the default stream
 * await copy.synchronize();
 */
import { InvalidArgumentError } from './errors';
import { resolveDevice, type Device, type DeviceSpec } from './device';
import { native, type NativeEventHandle, type NativeStreamHandle } from './native';

const defaults = new Map<Device, Stream>();

export class Stream {
  readonly device: Device;
  /** @internal */
  readonly handle: NativeStreamHandle;

  private constructor(device: Device, handle: NativeStreamHandle) {
    this.device = device;
    this.handle = handle;
  }

  /** The device's default stream (tensors use it unless given another). */
  static default(device?: DeviceSpec): Stream {
    const d = resolveDevice(device);
    let stream = defaults.get(d.device);
    if (!stream) {
      stream = new Stream(d.device, native().defaultStream(d.kind, d.index));
      defaults.set(d.device, stream);
    }
    return stream;
  }

  /** A new stream: a new worker thread on the CPU, a new CUDA stream on a GPU. */
  static create(device?: DeviceSpec): Stream {
    const d = resolveDevice(device);
    return new Stream(d.device, native().createStream(d.kind, d.index));
  }

  /** Resolves when all work enqueued so far has completed; rejects with the first failure of that work. */
  synchronize(): Promise<void> {
    return native().streamSynchronize(this.handle);
  }

  /** An event that completes when the work enqueued so far has. */
  record(): StreamEvent {
    return new StreamEvent(this.device, native().streamRecord(this.handle));
  }

  /** Work enqueued on this stream from now on waits for `event`. */
  wait(event: StreamEvent): void {
    if (!(event instanceof StreamEvent)) throw new InvalidArgumentError('Stream.wait expects a StreamEvent');
    native().streamWait(this.handle, event.handle);
  }
}

export class StreamEvent {
  readonly device: Device;
  /** @internal */
  readonly handle: NativeEventHandle;

  /** @internal */
  constructor(device: Device, handle: NativeEventHandle) {
    this.device = device;
    this.handle = handle;
  }

  /** True once the work before the record has completed. */
  query(): boolean {
    return native().eventQuery(this.handle);
  }

  /** Resolves once the work before the record has completed. */
  synchronize(): Promise<void> {
    return native().eventSynchronize(this.handle);
  }
}
