/**
 * The REST API: resources and methods from the shared route table, one Lambda
 * proxy integration per route, a Lambda REQUEST authorizer on X-API-Key,
 * API Gateway's usage plan for per-tenant throttling, JSON error bodies for
 * the gateway's own answers, access logs and execution metrics.
 *
 * Keys: callers present a tenant API key (or a sandbox token) in X-API-Key.
 * The authorizer checks its SHA-256 hash in the ApiKeys table and returns
 * `usageIdentifierKey`, the value of an API Gateway API key attached to the
 * usage plan (apiKeySource AUTHORIZER), so throttling and quota apply per
 * tenant and callers never hold the API Gateway key itself.
 */
import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigateway';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { binaryMediaTypes, gatewayResponses, gatewayResponseTemplate, integrationTimeoutSeconds } from '../../lambdas/shared/gateway';
import type { Route } from '../../lambdas/shared/routes';

export interface SandboxApiProps {
  /** The environment's name, in the API's, the usage plan's and the default key's names. */
  readonly envName: string;
  /** The one stage, and the last segment of the base URL. */
  readonly stageName: string;
  /** Per-key (usage plan) steady-state requests per second. */
  readonly throttleRateLimit: number;
  /** Per-key (usage plan) burst; at least the rate limit. */
  readonly throttleBurstLimit: number;
  /**
   * Per-key requests per day; 0 is no quota either.
   * @default - no quota
   */
  readonly quotaPerDay?: number;
  /**
   * How long the authorizer's answer for a key is cached; 0 turns caching off.
   * @default 0
   */
  readonly authorizerCacheSeconds?: number;
  /**
   * Execution logging of the stage; anything but OFF also sets up the account's API Gateway logging role.
   * @default 'OFF'
   */
  readonly executionLogLevel?: 'OFF' | 'ERROR' | 'INFO';
  /** How long the access logs are kept. */
  readonly accessLogRetention: logs.RetentionDays;
  /** What happens to the access log group when the stack goes. */
  readonly removalPolicy: RemovalPolicy;
}

export class SandboxApi extends Construct {
  public readonly restApi: apigw.RestApi;
  public readonly usagePlan: apigw.UsagePlan;
  /** API Gateway key in the usage plan; its value is what the authorizer returns as usageIdentifierKey. */
  public readonly defaultUsageKey: apigw.ApiKey;
  /**
   * Base URL built from the API id, region and stage name, not from the
   * deployment: functions can hold it without depending on their own methods.
   */
  public readonly url: string;
  private readonly validator: apigw.RequestValidator;
  private authorizer?: apigw.RequestAuthorizer;
  private readonly authorizerCacheSeconds: number;

  constructor(scope: Construct, id: string, props: SandboxApiProps) {
    super(scope, id);
    const stack = Stack.of(this);
    this.authorizerCacheSeconds = props.authorizerCacheSeconds ?? 0;
    const executionLogLevel = props.executionLogLevel ?? 'OFF';
    const quotaPerDay = props.quotaPerDay ?? 0;

    const accessLogs = new logs.LogGroup(this, 'AccessLogs', {
      retention: props.accessLogRetention,
      removalPolicy: props.removalPolicy,
    });
    const executionLogging = executionLogLevel !== 'OFF';

    this.restApi = new apigw.RestApi(this, 'Api', {
      restApiName: `ephemeral-sandbox-${props.envName}`,
      description: `Ephemeral Sandbox control plane (${props.envName})`,
      endpointTypes: [apigw.EndpointType.REGIONAL],
      apiKeySourceType: apigw.ApiKeySourceType.AUTHORIZER,
      // File bytes pass as binary (base64 to and from the handlers); the local gateway decides with the same list.
      binaryMediaTypes: [...binaryMediaTypes],
      // Execution logs need the account-level API Gateway role; retained so another stack's logging keeps working.
      cloudWatchRole: executionLogging,
      ...(executionLogging ? { cloudWatchRoleRemovalPolicy: RemovalPolicy.RETAIN } : {}),
      deployOptions: {
        stageName: props.stageName,
        // X-Ray from the gateway on: a trace follows a request into its handler.
        tracingEnabled: true,
        accessLogDestination: new apigw.LogGroupLogDestination(accessLogs),
        accessLogFormat: apigw.AccessLogFormat.custom(
          JSON.stringify({
            requestId: apigw.AccessLogField.contextRequestId(),
            time: apigw.AccessLogField.contextRequestTime(),
            ip: apigw.AccessLogField.contextIdentitySourceIp(),
            method: apigw.AccessLogField.contextHttpMethod(),
            resource: apigw.AccessLogField.contextResourcePath(),
            status: apigw.AccessLogField.contextStatus(),
            responseLength: apigw.AccessLogField.contextResponseLength(),
            latencyMs: apigw.AccessLogField.contextResponseLatency(),
            integrationLatencyMs: apigw.AccessLogField.contextIntegrationLatency(),
            tenant: apigw.AccessLogField.contextAuthorizer('tenant_id'),
            principal: apigw.AccessLogField.contextAuthorizerPrincipalId(),
            apiKeyId: apigw.AccessLogField.contextIdentityApiKeyId(),
            error: apigw.AccessLogField.contextErrorMessage(),
            errorType: apigw.AccessLogField.contextErrorResponseType(),
          }),
        ),
        metricsEnabled: true,
        loggingLevel: executionLogging ? apigw.MethodLoggingLevel[executionLogLevel] : apigw.MethodLoggingLevel.OFF,
        // Request and response bodies carry sandbox output and caller secrets: never logged.
        dataTraceEnabled: false,
      },
    });
    // The stack's ApiUrl output replaces the generic one RestApi adds.
    this.restApi.node.tryRemoveChild('Endpoint');
    this.url = `https://${this.restApi.restApiId}.execute-api.${stack.region}.${stack.urlSuffix}/${props.stageName}`;

    // The gateway's own answers come from the table the local gateway reads too.
    for (const r of gatewayResponses) {
      const headers = Object.fromEntries(Object.entries(r.headers ?? {}).map(([k, v]) => [k, `'${v}'`]));
      this.restApi.addGatewayResponse(`Gateway${r.type}`, {
        type: apigw.ResponseType.of(r.type),
        ...(r.status !== undefined ? { statusCode: String(r.status) } : {}),
        responseHeaders: { 'Content-Type': "'application/json'", ...headers },
        templates: { 'application/json': gatewayResponseTemplate(r) },
      });
    }

    // Path parameters are declared required and checked by API Gateway.
    this.validator = new apigw.RequestValidator(this, 'ParameterValidator', {
      restApi: this.restApi,
      validateRequestParameters: true,
      // No method declares a body model (yet): bodies pass through to the handlers, which validate with zod.
      validateRequestBody: true,
    });

    this.usagePlan = this.restApi.addUsagePlan('TenantPlan', {
      name: `ephemeral-sandbox-${props.envName}-tenant`,
      description: 'Per-tenant throttling and quota: the authorizer returns a key of this plan as usageIdentifierKey',
      throttle: { rateLimit: props.throttleRateLimit, burstLimit: props.throttleBurstLimit },
      ...(quotaPerDay > 0 ? { quota: { limit: quotaPerDay, period: apigw.Period.DAY } } : {}),
    });
    this.usagePlan.addApiStage({ stage: this.restApi.deploymentStage });
    // API Gateway generates the value; the key-management CLI reads it (GetApiKey includeValue) into tenant key records.
    this.defaultUsageKey = new apigw.ApiKey(this, 'DefaultUsageKey', {
      description: `Ephemeral Sandbox ${props.envName}: default usage-plan key for tenants without their own`,
      enabled: true,
    });
    this.usagePlan.addApiKey(this.defaultUsageKey);

    NagSuppressions.addResourceSuppressions(
      this.restApi,
      [
        {
          id: 'AwsSolutions-APIG3',
          reason:
            'No WAF web ACL: every route but /health needs a valid API key checked by the authorizer, and per-tenant throttling and quotas come from the usage plan; a web ACL (about $5/month plus requests) can be associated later without code changes.',
        },
      ],
      true,
    );
    if (executionLogging) {
      NagSuppressions.addResourceSuppressions(
        this.restApi,
        [
          {
            id: 'AwsSolutions-IAM4',
            reason:
              "AmazonAPIGatewayPushToCloudWatchLogs is the AWS-managed policy API Gateway's account-level logging role needs; it only writes CloudWatch Logs.",
            appliesTo: ['Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs'],
          },
        ],
        true,
      );
    } else {
      NagSuppressions.addResourceSuppressions(
        this.restApi,
        [
          {
            id: 'AwsSolutions-APIG6',
            reason: 'Execution logging is turned off for this environment in cdk.json (api.executionLogLevel OFF); access logs and metrics stay on.',
          },
        ],
        true,
      );
    }
  }

  /**
   * Adds one method per route. Routes that take a key or a sandbox token go
   * through the authorizer; API-key routes also need the usage-plan key the
   * authorizer returns; `auth: 'none'` stays open.
   */
  addRoutes(routes: readonly Route[], functionFor: (handler: string) => lambda.IFunction, authorizerFunction: lambda.IFunction): void {
    this.authorizer ??= new apigw.RequestAuthorizer(this, 'KeyAuthorizer', {
      handler: authorizerFunction,
      identitySources: [apigw.IdentitySource.header('X-API-Key')],
      resultsCacheTtl: Duration.seconds(this.authorizerCacheSeconds),
      authorizerName: 'api-key',
    });
    const integrations = new Map<string, apigw.LambdaIntegration>();
    for (const route of routes) {
      let integration = integrations.get(route.handler);
      if (!integration) {
        // One integration per function; console test-invoke permissions are not needed.
        integration = new apigw.LambdaIntegration(functionFor(route.handler), {
          proxy: true,
          allowTestInvoke: false,
          timeout: Duration.seconds(integrationTimeoutSeconds),
        });
        integrations.set(route.handler, integration);
      }
      const resource = this.restApi.root.resourceForPath(route.path);
      const pathParameters = [...route.path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);
      const requestParameters = Object.fromEntries(pathParameters.map((p) => [`method.request.path.${p}`, true]));
      const open = route.auth === 'none';
      const method = resource.addMethod(route.method, integration, {
        requestValidator: this.validator,
        requestParameters,
        ...(open
          ? { authorizationType: apigw.AuthorizationType.NONE }
          : {
              authorizer: this.authorizer,
              authorizationType: apigw.AuthorizationType.CUSTOM,
              // Tenant calls count against the usage plan; a sandbox token's signals (its own sandbox only) do not.
              apiKeyRequired: route.auth === 'api-key',
            }),
      });
      NagSuppressions.addResourceSuppressions(
        method,
        open
          ? [
              {
                id: 'AwsSolutions-APIG4',
                reason: `${route.method} ${route.path} is the public liveness probe: it returns no tenant data and must work without a key.`,
              },
              { id: 'AwsSolutions-COG4', reason: `${route.method} ${route.path} is the public liveness probe: no caller identity is involved.` },
            ]
          : [
              {
                id: 'AwsSolutions-COG4',
                reason: `${route.method} ${route.path} is called by machines with tenant API keys or sandbox tokens, checked by the Lambda REQUEST authorizer (keys hashed in DynamoDB), not by Cognito users.`,
              },
            ],
      );
    }
  }
}
