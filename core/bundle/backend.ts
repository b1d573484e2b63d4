/**
 * Which onnxruntime runs the stages: the native build (onnxruntime-node) where it has binaries,
 * else the WebAssembly build (onnxruntime-web), for boards such as 32-bit ARM (the reference
 * paper's Odroid-XU4) for which onnxruntime-node ships none. Both expose the same API.
 */
import type * as OrtNode from "onnxruntime-node";

export type BackendChoice = "auto" | "native" | "wasm";
export type Ort = typeof OrtNode;

export interface Runtime {
  readonly backend: "native" | "wasm";
  readonly ort: Ort;
  /** Why "auto" fell back to wasm, when it did. */
  readonly fallbackReason?: string;
}

const cache = new Map<string, Promise<Runtime>>();

export function loadRuntime(choice: BackendChoice = "auto"): Promise<Runtime> {
  let runtime = cache.get(choice);
  if (!runtime) {
    runtime = load(choice);
    cache.set(choice, runtime);
  }
  return runtime;
}

async function load(choice: BackendChoice): Promise<Runtime> {
  if (choice !== "wasm") {
    try {
      const ort = (await import("onnxruntime-node")) as Ort;
      return { backend: "native", ort };
    } catch (err) {
      if (choice === "native")
        throw new Error(`onnxruntime-node cannot load on this machine: ${(err as Error).message}`);
      return { ...(await loadWasm()), fallbackReason: (err as Error).message.split("\n")[0] ?? "" };
    }
  }
  return loadWasm();
}

async function loadWasm(): Promise<Runtime> {
  const ort = (await import("onnxruntime-web")) as unknown as Ort & {
    env: { wasm: { numThreads: number; proxy: boolean } };
  };
  // One thread: each tier already runs one session per worker; wasm threads need cross-origin isolation anyway.
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  return { backend: "wasm", ort };
}
