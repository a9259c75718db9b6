import { execFile } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

/** The repository root (where buf.yaml and proto/ live). */
export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** The proto files a Python client of the gateway needs, relative to proto/. */
export const PYTHON_CLIENT_PROTOS = [
  "ollama/gateway/v1/inference.proto",
  "ollama/gateway/v1/types.proto",
  "google/rpc/error_details.proto",
  "google/rpc/status.proto",
];

/** What the tests say when no usable Python is installed. */
export const NO_PYTHON_MESSAGE =
  "no Python with the grpc and grpc_tools modules was found (tried $PYTHON, /usr/bin/python3, python3): " +
  "run scripts/install-system-deps.sh to install Debian's python3-grpcio and python3-grpc-tools";

/**
 * Finds a Python interpreter that can `import grpc, grpc_tools.protoc`.
 * `$PYTHON` is tried first, then Debian's /usr/bin/python3 (where the apt
 * packages live; a pyenv `python3` earlier on PATH usually lacks them), then
 * `python3`. Resolves undefined when none works.
 */
export async function findGrpcPython(): Promise<string | undefined> {
  const candidates = [process.env["PYTHON"], "/usr/bin/python3", "python3"].filter(
    (c): c is string => c !== undefined && c !== "",
  );
  for (const python of candidates) {
    try {
      await run(python, ["-c", "import grpc, grpc_tools.protoc"], { timeout: 10_000 });
      return python;
    } catch {
      // not this one
    }
  }
  return undefined;
}

/**
 * Generates Python message and gRPC stubs for PYTHON_CLIENT_PROTOS into `outDir`.
 *
 * Debian bookworm's python3-grpc-tools (1.14) bundles protoc 3.5.1, which
 * rejects proto3 `optional` fields ("Explicit 'optional' labels are
 * disallowed") used by our protos and by google/rpc/error_details.proto. So
 * buf (which understands them) compiles the protos into a FileDescriptorSet,
 * and grpc_tools' protoc only runs its Python generators on that set; the
 * generated code keeps proto3 `optional` presence. Newer grpc_tools accept the
 * same input. The bundled `python -m grpc_tools.protoc` entry point always
 * adds `-I`, which protoc refuses together with `--descriptor_set_in`, so
 * `grpc_tools.protoc.main` is called directly.
 */
export async function generatePythonStubs(python: string, outDir: string): Promise<void> {
  const descriptorSet = join(outDir, "gateway.binpb");
  await run(
    join(REPO_ROOT, "node_modules", ".bin", "buf"),
    ["build", "--as-file-descriptor-set", "-o", descriptorSet],
    {
      cwd: REPO_ROOT,
      timeout: 30_000,
    },
  );
  const args = [
    "protoc",
    `--descriptor_set_in=${descriptorSet}`,
    `--python_out=${outDir}`,
    `--grpc_python_out=${outDir}`,
    ...PYTHON_CLIENT_PROTOS,
  ];
  const script = "import sys\nfrom grpc_tools import protoc\nsys.exit(protoc.main(sys.argv[1:]))";
  await run(python, ["-c", script, ...args], { cwd: REPO_ROOT, timeout: 30_000 });
}
