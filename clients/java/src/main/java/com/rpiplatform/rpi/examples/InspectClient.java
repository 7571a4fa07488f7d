package com.rpiplatform.rpi.examples;

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.UnknownFieldSet;
import com.rpiplatform.rpi.inspection.v1.AnswerReady;
import com.rpiplatform.rpi.inspection.v1.GenerationProgress;
import com.rpiplatform.rpi.inspection.v1.Image;
import com.rpiplatform.rpi.inspection.v1.InspectRequest;
import com.rpiplatform.rpi.inspection.v1.InspectStreamResponse;
import com.rpiplatform.rpi.inspection.v1.Inspection;
import com.rpiplatform.rpi.inspection.v1.InspectionServiceGrpc;
import com.rpiplatform.rpi.inspection.v1.Question;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptor;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.MetadataUtils;
import java.io.File;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;

/**
 * Calls rpi.inspection.v1.InspectionService (Inspect or InspectStream) and prints the progress
 * events, the decision and the per-question answers, in the same format as the Go example.
 *
 * <p>Exit status: 0 on success, the numeric gRPC status code (1-16) when the call fails, 64 on
 * a usage error: the same as the Python CLI and the Go example (docs/errors.md).
 */
public final class InspectClient {
  private static final int EXIT_USAGE = 64;
  private static final Metadata.Key<byte[]> STATUS_DETAILS =
      Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER);

  private String target = "localhost:50051";
  private String productName = "";
  private String productId = "";
  private String shippingId = "";
  private String inspectionId = "";
  private String previousId = "";
  private final List<String> references = new ArrayList<>();
  private final List<String> pickups = new ArrayList<>();
  private final List<String> questions = new ArrayList<>();
  private boolean stream;
  private boolean async;
  private String requestId = "";
  private String callbackUrl = "";
  private long timeoutMillis = 120_000;
  private String tlsCa = "";
  private String tlsCert = "";
  private String tlsKey = "";
  private String token = System.getenv().getOrDefault("RPI_TOKEN", "");

  private InspectClient() {}

  public static void main(String[] args) {
    InspectClient client = new InspectClient();
    try {
      client.parse(args);
    } catch (IllegalArgumentException e) {
      System.err.println(e.getMessage());
      System.err.println(USAGE);
      System.exit(EXIT_USAGE);
    }
    System.exit(client.run());
  }

  private static final String USAGE =
      "usage: InspectClient [-target host:port] [-stream] [-timeout 120s]\n"
          + "  -async (SubmitInspection, then poll the operation)  -request-id ID  -callback URL\n"
          + "  -reference URL|FILE (repeatable)  -pickup URL|FILE (repeatable)\n"
          + "  -product-name NAME  -product-id ID  -shipping-id ID\n"
          + "  -inspection-id UUID  -previous-inspection-id UUID\n"
          + "  -question \"type|label|value_to_check|mandatory\" (repeatable)\n"
          + "  -tls-ca FILE (turns TLS on)  -tls-cert FILE -tls-key FILE (mutual TLS, PKCS#8 key)\n"
          + "  -token KEY_OR_JWT (default $RPI_TOKEN)";

  private static final Set<String> VALUE_FLAGS = Set.of(
      "target", "tls-ca", "tls-cert", "tls-key", "token", "reference", "pickup", "product-name",
      "product-id", "shipping-id", "inspection-id", "previous-inspection-id", "question",
      "timeout", "request-id", "callback");

  /** Accepts the Go client's flag syntax: -name value, --name value, -name=value. */
  private void parse(String[] args) {
    for (int i = 0; i < args.length; i++) {
      String arg = args[i];
      if (!arg.startsWith("-")) {
        throw new IllegalArgumentException("unexpected argument: " + arg);
      }
      String name = arg.replaceFirst("^--?", "");
      String value = null;
      int eq = name.indexOf('=');
      if (eq >= 0) {
        value = name.substring(eq + 1);
        name = name.substring(0, eq);
      }
      if (name.equals("stream")) {
        stream = value == null || Boolean.parseBoolean(value);
        continue;
      }
      if (name.equals("async")) {
        async = value == null || Boolean.parseBoolean(value);
        continue;
      }
      if (name.equals("h") || name.equals("help")) {
        System.out.println(USAGE);
        System.exit(0);
      }
      if (!VALUE_FLAGS.contains(name)) {
        throw new IllegalArgumentException("flag provided but not defined: -" + name);
      }
      if (value == null) {
        if (i + 1 >= args.length) {
          throw new IllegalArgumentException("flag needs an argument: -" + name);
        }
        value = args[++i];
      }
      switch (name) {
        case "target": target = value; break;
        case "tls-ca": tlsCa = value; break;
        case "tls-cert": tlsCert = value; break;
        case "tls-key": tlsKey = value; break;
        case "token": token = value; break;
        case "reference": references.add(value); break;
        case "pickup": pickups.add(value); break;
        case "product-name": productName = value; break;
        case "product-id": productId = value; break;
        case "shipping-id": shippingId = value; break;
        case "inspection-id": inspectionId = value; break;
        case "previous-inspection-id": previousId = value; break;
        case "question": questions.add(value); break;
        case "timeout": timeoutMillis = parseDuration(value); break;
        case "request-id": requestId = value; break;
        case "callback": callbackUrl = value; break;
        default: throw new IllegalArgumentException("flag provided but not defined: -" + name);
      }
    }
  }

  /** Go-style durations: 500ms, 90s, 2m, 1h; a bare number is seconds. */
  private static long parseDuration(String value) {
    String[][] units = {{"ms", "1"}, {"s", "1000"}, {"m", "60000"}, {"h", "3600000"}};
    try {
      for (String[] unit : units) {
        if (value.endsWith(unit[0])) {
          String number = value.substring(0, value.length() - unit[0].length());
          return (long) (Double.parseDouble(number) * Long.parseLong(unit[1]));
        }
      }
      return (long) (Double.parseDouble(value) * 1000);
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException("invalid duration: " + value);
    }
  }

  /** URLs are sent as-is (the server fetches them); anything else is a local file sent inline. */
  private static Image image(String ref) throws IOException {
    if (ref.startsWith("https://") || ref.startsWith("http://")) {
      return Image.newBuilder().setUri(ref).build();
    }
    byte[] data;
    try {
      data = Files.readAllBytes(Paths.get(ref));
    } catch (IOException e) {
      throw new IOException("cannot read image " + quote(ref)
          + " (not an http(s) URL, so read as a local file): " + why(e), e);
    }
    return Image.newBuilder().setContent(ByteString.copyFrom(data)).build();
  }

  /** An I/O error in words: NIO's own messages are often just the path. */
  private static String why(IOException e) {
    if (e instanceof NoSuchFileException) {
      return "no such file";
    }
    if (e instanceof AccessDeniedException) {
      return "permission denied";
    }
    return e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage();
  }

  private static Question question(String spec) {
    String[] parts = spec.split("\\|", -1);
    if (parts.length != 4) {
      throw new IllegalArgumentException(
          "question \"" + spec + "\": want type|label|value_to_check|mandatory");
    }
    String mandatory = parts[3].trim().toLowerCase(Locale.ROOT);
    return Question.newBuilder()
        .setType(parts[0])
        .setLabel(parts[1])
        .setValueToCheck(parts[2])
        .setMandatory(mandatory.equals("yes") || mandatory.equals("true") || mandatory.equals("1"))
        .build();
  }

  private InspectRequest buildRequest() throws IOException {
    InspectRequest.Builder req = InspectRequest.newBuilder()
        .setInspectionId(inspectionId)
        .setPreviousInspectionId(previousId)
        .setShippingId(shippingId)
        .setProductId(productId)
        .setProductName(productName);
    for (String ref : references) {
      req.addReferenceImages(image(ref));
    }
    for (String ref : pickups) {
      req.addPickupImages(image(ref));
    }
    for (String spec : questions) {
      req.addQuestions(question(spec));
    }
    return req.build();
  }

  /** TLS when -tls-ca is given (mutual TLS with -tls-cert/-tls-key), else plaintext (local). */
  private ChannelCredentials channelCredentials() throws IOException {
    if (tlsCa.isEmpty()) {
      if (!tlsCert.isEmpty() || !tlsKey.isEmpty()) {
        throw new IllegalArgumentException("-tls-cert/-tls-key need -tls-ca");
      }
      return InsecureChannelCredentials.create();
    }
    TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder().trustManager(new File(tlsCa));
    if (!tlsCert.isEmpty() || !tlsKey.isEmpty()) {
      tls.keyManager(new File(tlsCert), new File(tlsKey));
    }
    return tls.build();
  }

  private int run() {
    InspectRequest request;
    try {
      request = buildRequest();
    } catch (IOException | IllegalArgumentException e) {
      System.err.println(e.getMessage());
      return EXIT_USAGE;
    }
    ManagedChannel channel;
    try {
      channel = Grpc.newChannelBuilder(target, channelCredentials()).build();
    } catch (IOException e) {
      System.err.println("TLS: cannot read the certificate files: " + why(e));
      return EXIT_USAGE;
    } catch (IllegalArgumentException e) {
      System.err.println("TLS: " + e.getMessage());
      return EXIT_USAGE;
    }
    try {
      ClientInterceptor[] interceptors = {};
      if (!token.isEmpty()) {
        Metadata headers = new Metadata();
        headers.put(
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + token);
        interceptors = new ClientInterceptor[] {MetadataUtils.newAttachHeadersInterceptor(headers)};
      }
      if (async) {
        return AsyncInspect.run(
            channel, interceptors, request, requestId, callbackUrl, timeoutMillis);
      }
      InspectionServiceGrpc.InspectionServiceBlockingStub stub =
          InspectionServiceGrpc.newBlockingStub(channel)
              .withDeadlineAfter(timeoutMillis, TimeUnit.MILLISECONDS)
              .withInterceptors(interceptors);
      if (!stream) {
        printInspection(stub.inspect(request).getInspection());
        return 0;
      }
      Inspection last = null;
      Iterator<InspectStreamResponse> events = stub.inspectStream(request);
      while (events.hasNext()) {
        InspectStreamResponse event = events.next();
        printEvent(event);
        if (event.hasInspection()) {
          last = event.getInspection();
        }
      }
      if (last == null) {
        System.err.println("rpc failed: stream ended without an inspection");
        return Status.Code.UNKNOWN.value();
      }
      printInspection(last);
      return 0;
    } catch (StatusRuntimeException e) {
      return fail(e, target, timeoutMillis);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      System.err.println("rpc failed: CANCELLED: interrupted while polling the operation");
      return Status.Code.CANCELLED.value();
    } finally {
      channel.shutdownNow();
    }
  }

  private static void printEvent(InspectStreamResponse event) {
    switch (event.getEventCase()) {
      case ACCEPTED:
        System.out.println("event accepted: inspection_id=" + event.getAccepted().getInspectionId());
        break;
      case IMAGES_FETCHED:
        System.out.printf(Locale.ROOT, "event images_fetched: %d/%d%n",
            event.getImagesFetched().getFetched(), event.getImagesFetched().getTotal());
        break;
      case PREPROCESSING_DONE:
        System.out.printf(Locale.ROOT, "event preprocessing_done: tiles=%d prompt_tokens=%d%n",
            event.getPreprocessingDone().getTiles(),
            event.getPreprocessingDone().getPromptTokens());
        break;
      case QUEUED:
        System.out.println("event queued: position=" + event.getQueued().getPosition());
        break;
      case GENERATION_PROGRESS:
        GenerationProgress g = event.getGenerationProgress();
        System.out.printf(Locale.ROOT, "event generation_progress: attempt=%d tokens=%d/%d%n",
            g.getAttempt(), g.getTokensGenerated(), g.getMaxNewTokens());
        break;
      case ANSWER_READY:
        // The model's answer as generated; the final one (after the decision rules) comes with
        // the inspection and can differ.
        AnswerReady a = event.getAnswerReady();
        System.out.printf(Locale.ROOT, "event answer_ready: model's raw answer "
            + "attempt=%d label=%s result=%s confidence=%d retake=%b%n",
            a.getAttempt(), quote(a.getLabel()), quote(a.getResult()), a.getConfidence(),
            a.getRetakeImage());
        break;
      case INSPECTION:
        System.out.println("event inspection");
        break;
      default:
        // A newer server may send events this client does not know yet.
        System.out.println("event unknown");
    }
  }

  private static double seconds(com.google.protobuf.Duration d) {
    return d.getSeconds() + d.getNanos() / 1e9;
  }

  static void printInspection(Inspection in) {
    System.out.println("inspection_id: " + in.getInspectionId());
    System.out.println("shipping_id: " + in.getShippingId());
    System.out.println("decision: " + in.getDecision().name().replaceFirst("^DECISION_", ""));
    System.out.println("model_recommendation: "
        + in.getModelRecommendation().name().replaceFirst("^RECOMMENDATION_", ""));
    System.out.printf(Locale.ROOT, "match_score: %.1f%n", in.getMatchScore());
    System.out.println("attempts: " + in.getAttempts());
    if (in.hasModel()) {
      System.out.printf(Locale.ROOT, "model: %s (revision %s, untrained=%b)%n",
          in.getModel().getName(), quote(in.getModel().getRevision()),
          in.getModel().getUntrained());
      if (in.getModel().getUntrained()) {
        System.err.println("WARNING: the server runs an untrained demo model: "
            + "its answers and decision carry no meaning");
      }
    }
    if (in.hasTimings()) {
      System.out.printf(Locale.ROOT,
          "timings: fetch=%.3fs preprocess=%.3fs queue=%.3fs generate=%.3fs total=%.3fs%n",
          seconds(in.getTimings().getFetch()), seconds(in.getTimings().getPreprocess()),
          seconds(in.getTimings().getQueue()), seconds(in.getTimings().getGenerate()),
          seconds(in.getTimings().getTotal()));
    }
    if (in.getAnswersCount() > 0) {
      System.out.println("final answers, after the decision rules:");
    }
    for (com.rpiplatform.rpi.inspection.v1.Answer a : in.getAnswersList()) {
      System.out.printf(Locale.ROOT,
          "answer: %s = %s (expected %s, %s, confidence %d%%, source %s, retake=%b)%n",
          quote(a.getLabel()), quote(a.getAnswer()), quote(a.getValueToCheck()),
          a.getMandatory() ? "mandatory" : "optional", a.getConfidence(),
          a.getSource().name().replaceFirst("^ANSWER_SOURCE_", ""), a.getRetakeImage());
      if (!a.getEvidence().isEmpty()) {
        System.out.println("  evidence: " + a.getEvidence());
      }
    }
  }

  /** Prints the status with its google.rpc details and returns the exit status. */
  private static int fail(StatusRuntimeException e, String target, long timeoutMillis) {
    Status status = e.getStatus();
    System.err.println("rpc failed: " + status.getCode().name() + ": " + status.getDescription());
    if (status.getCause() != null && status.getCause().getMessage() != null) {
      // grpc-java's description of a transport failure is "io exception": the cause says which.
      System.err.println("  cause: " + status.getCause().getMessage());
    }
    Metadata trailers = e.getTrailers();
    byte[] details = trailers == null ? null : trailers.get(STATUS_DETAILS);
    boolean explained = false;
    if (details != null) {
      try {
        explained = printDetails(details);
      } catch (InvalidProtocolBufferException ignored) {
        // The code and message above are what matters; details are a courtesy.
      }
    }
    // No ErrorInfo: grpc itself ended the call before any server code answered.
    if (!explained && status.getCode() == Status.Code.UNAVAILABLE) {
      System.err.println("cannot reach " + target + ": check the address, that the service is "
          + "running, and -tls-ca if it serves TLS");
    }
    if (!explained && status.getCode() == Status.Code.DEADLINE_EXCEEDED) {
      System.err.printf(Locale.ROOT, "no answer from %s within -timeout %dms%n", target,
          timeoutMillis);
    }
    return status.getCode() == Status.Code.OK ? Status.Code.UNKNOWN.value() : status.getCode().value();
  }

  /**
   * Decodes google.rpc.Status details by field number: Debian ships no Java classes for the
   * google.rpc protos, and three small messages do not justify generating them.
   */
  static boolean printDetails(byte[] statusBytes) throws InvalidProtocolBufferException {
    UnknownFieldSet status = UnknownFieldSet.parseFrom(statusBytes);
    if (!status.hasField(3)) {
      return false;
    }
    boolean errorInfo = false;
    for (ByteString raw : status.getField(3).getLengthDelimitedList()) {
      Any detail = Any.parseFrom(raw);
      UnknownFieldSet fields = UnknownFieldSet.parseFrom(detail.getValue());
      switch (detail.getTypeUrl().replaceFirst("^.*/", "")) {
        case "google.rpc.ErrorInfo":
          errorInfo = true;
          System.err.printf("  reason: %s (domain %s)%n", text(fields, 1), text(fields, 2));
          // metadata (field 3) is a map: repeated entries of key (1) and value (2).
          TreeMap<String, String> metadata = new TreeMap<>();
          if (fields.hasField(3)) {
            for (ByteString entry : fields.getField(3).getLengthDelimitedList()) {
              UnknownFieldSet pair = UnknownFieldSet.parseFrom(entry);
              metadata.put(text(pair, 1), text(pair, 2));
            }
          }
          metadata.forEach((k, v) -> System.err.printf("  metadata %s=%s%n", k, v));
          break;
        case "google.rpc.BadRequest":
          if (fields.hasField(1)) {
            for (ByteString v : fields.getField(1).getLengthDelimitedList()) {
              UnknownFieldSet violation = UnknownFieldSet.parseFrom(v);
              System.err.printf("  field %s: %s%n", text(violation, 1), text(violation, 2));
            }
          }
          break;
        case "google.rpc.RetryInfo":
          if (fields.hasField(1)) {
            com.google.protobuf.Duration delay = com.google.protobuf.Duration.parseFrom(
                fields.getField(1).getLengthDelimitedList().get(0));
            System.err.printf(Locale.ROOT, "  retry after: %.1fs%n", seconds(delay));
          }
          break;
        default:
          break;
      }
    }
    return errorInfo;
  }

  private static String text(UnknownFieldSet fields, int number) {
    if (!fields.hasField(number) || fields.getField(number).getLengthDelimitedList().isEmpty()) {
      return "";
    }
    return fields.getField(number).getLengthDelimitedList().get(0).toStringUtf8();
  }

  /** Double-quoted with Go's %q escapes for the characters that matter here. */
  private static String quote(String s) {
    StringBuilder out = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\t': out.append("\\t"); break;
        case '\r': out.append("\\r"); break;
        default:
          if (c < 0x20) {
            out.append(String.format(Locale.ROOT, "\\x%02x", (int) c));
          } else {
            out.append(c);
          }
      }
    }
    return out.append('"').toString();
  }
}
