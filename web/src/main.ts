// A small page that uses taskservice from a browser, as a web front end would: register, log in,
// watch, create tasks and list them, over Connect, JSON or binary (GET for read-only calls), or
// gRPC-Web; or, with protocol=rest, the original REST API's flows (rest.ts). The API's address and
// the protocol (connect, connect-proto, grpc-web or rest) come from the query string
// (?api=http://host:8080&protocol=grpc-web).
// It writes what it saw as JSON into #result and sets <body data-state> to "done" or "failed",
// which tests/test_browser.py reads.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "../gen/taskservice/v1/auth_service_pb";
import { TaskService } from "../gen/taskservice/v1/task_service_pb";
import { UserService } from "../gen/taskservice/v1/user_service_pb";
import { runRest } from "./rest";

const PASSWORD = "correct horse battery";

async function run(): Promise<Record<string, unknown>> {
  const params = new URLSearchParams(location.search);
  const baseUrl = params.get("api") ?? location.origin;
  const protocol = params.get("protocol") ?? "connect";
  if (protocol === "rest") return runRest(baseUrl);
  const transport =
    protocol === "grpc-web"
      ? createGrpcWebTransport({ baseUrl })
      : createConnectTransport({
          baseUrl,
          useHttpGet: true,
          useBinaryFormat: protocol === "connect-proto",
        });
  const auth = createClient(AuthService, transport);
  const users = createClient(UserService, transport);
  const tasks = createClient(TaskService, transport);

  const email = `browser-${protocol}-${Date.now()}@example.com`;
  await auth.register({ email, password: PASSWORD });
  const login = await auth.login({ email, password: PASSWORD });
  const headers = { authorization: `Bearer ${login.accessToken}` };

  // Watch before writing: the stream opens with a bookmark, then sends each change as it commits.
  const abort = new AbortController();
  const stream = tasks
    .watchTasks({}, { headers, signal: abort.signal })
    [Symbol.asyncIterator]();
  const opening = await stream.next();
  const bookmark = opening.done ? BigInt(-1) : opening.value.revision;
  const watched: string[] = [];
  const revisions: bigint[] = [];
  const watching = (async () => {
    while (watched.length < 2) {
      const next = await stream.next();
      if (next.done) return;
      if (next.value.change) {
        watched.push(next.value.change.task?.title ?? "");
        revisions.push(next.value.revision - bookmark);
      }
    }
  })();

  const first = await tasks.createTask({ task: { title: "first from the browser" } }, { headers });
  await tasks.createTask({ task: { title: "second from the browser" } }, { headers });
  const listed = await tasks.listTasks({}, { headers });
  const me = await users.getMe({}, { headers });
  await watching;
  abort.abort();

  // Response headers and trailers are readable by page code (CORS exposes them). The request id
  // is a header, and only a header: clients merge both into an error's metadata.
  let requestId = "";
  let trailerRequestId = "";
  await tasks.getTask(
    { id: first.task?.id },
    {
      headers: { ...headers, "x-request-id": `page-${protocol}` },
      onHeader: (h) => (requestId = h.get("x-request-id") ?? ""),
      onTrailer: (t) => (trailerRequestId = t.get("x-request-id") ?? ""),
    },
  );

  let notFound = "";
  let errorRequestId = "";
  try {
    await tasks.getTask({ id: BigInt(987654321) }, { headers });
  } catch (error) {
    const failure = ConnectError.from(error);
    notFound = Code[failure.code];
    errorRequestId = failure.metadata.get("x-request-id") ?? "";
  }

  // A malformed token, as a stale or mangled one reaches the API: the error's metadata (headers
  // and trailers merged) carries the request id the page sent, once.
  let unauthenticated = "";
  let unauthenticatedRequestId = "";
  try {
    await users.getMe(
      {},
      {
        headers: { authorization: "Bearer not.a.jwt", "x-request-id": `page-error-${protocol}` },
      },
    );
  } catch (error) {
    const failure = ConnectError.from(error);
    unauthenticated = Code[failure.code];
    unauthenticatedRequestId = failure.metadata.get("x-request-id") ?? "";
  }

  return {
    protocol,
    email: me.user?.email,
    titles: listed.tasks.map((task) => task.title),
    watched,
    watchedRevisions: revisions.map(String),
    requestId,
    trailerRequestId,
    notFound,
    errorRequestId,
    unauthenticated,
    unauthenticatedRequestId,
  };
}

const result = document.getElementById("result") as HTMLElement;
run().then(
  (value) => {
    result.textContent = JSON.stringify(value);
    document.body.dataset.state = "done";
  },
  (error: unknown) => {
    result.textContent = JSON.stringify({ error: String(error) });
    document.body.dataset.state = "failed";
  },
);
