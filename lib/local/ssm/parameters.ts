/**
 * Parameter Store as far as the stack uses it: String parameters read with
 * GetParameter and written with PutParameter (the fleet's current sandbox
 * image, which CDK writes on AWS and running hosts read each image pass).
 * SecureString, hierarchies (GetParametersByPath), labels and history are not
 * emulated: asked for, they are refused, not ignored.
 */
import { AwsJsonError } from '../aws-json';
import { optionalString, requiredString, validation, type RequestBody } from './requests';

interface Parameter {
  value: string;
  version: number;
  modifiedAt: number;
}

/** SSM's own rule for names: letters, digits, _.-/ (a path starts with /), at most 1011 characters. */
const namePattern = /^[a-zA-Z0-9_.\-/]{1,1011}$/;
/** A standard-tier parameter holds at most 4 KB. */
const maxValueBytes = 4096;

function checkName(name: string): void {
  if (!namePattern.test(name))
    throw validation(`Value '${name}' at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9_.\\-/]+$`);
}

export class ParameterStore {
  private readonly parameters = new Map<string, Parameter>();

  constructor(
    private readonly region: string,
    private readonly account = '000000000000',
  ) {}

  /** Writes `name` (a new version when it exists), as PutParameter with Overwrite. Answers the version. */
  put(name: string, value: string, now = Date.now()): number {
    checkName(name);
    if (value === '' || Buffer.byteLength(value) > maxValueBytes)
      throw validation(`Value at 'value' failed to satisfy constraint: Member must have length between 1 and ${maxValueBytes}`);
    const version = (this.parameters.get(name)?.version ?? 0) + 1;
    this.parameters.set(name, { value, version, modifiedAt: now });
    return version;
  }

  putParameter(body: RequestBody): unknown {
    const name = requiredString(body, 'Name');
    const value = requiredString(body, 'Value');
    const type = optionalString(body, 'Type') ?? 'String';
    if (type !== 'String') throw new AwsJsonError('UnsupportedParameterType', `the local SSM endpoint keeps String parameters only, not ${type}`);
    checkName(name);
    if (this.parameters.has(name) && body.Overwrite !== true) {
      throw new AwsJsonError(
        'ParameterAlreadyExists',
        'The parameter already exists. To overwrite this value, set the overwrite option in the request to true.',
      );
    }
    return { Version: this.put(name, value), Tier: 'Standard' };
  }

  getParameter(body: RequestBody): unknown {
    const name = requiredString(body, 'Name');
    // name:version and name:label selectors are SSM features the stack does not use.
    if (name.includes(':')) throw new AwsJsonError('ParameterVersionNotFound', `the local SSM endpoint does not keep versions or labels (${name})`);
    const p = this.parameters.get(name);
    if (!p) throw new AwsJsonError('ParameterNotFound', `Parameter ${name} not found.`);
    return {
      Parameter: {
        Name: name,
        Type: 'String',
        Value: p.value,
        Version: p.version,
        LastModifiedDate: p.modifiedAt / 1000,
        ARN: `arn:aws:ssm:${this.region}:${this.account}:parameter${name.startsWith('/') ? '' : '/'}${name}`,
        DataType: 'text',
      },
    };
  }
}
