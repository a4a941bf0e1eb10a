{{/* Names, labels and shared pod fragments for every template of the chart. */}}

{{- define "durable.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "durable.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "durable.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "durable.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: durable
{{- end -}}

{{/* Selector labels of one component: include "durable.selectorLabels" (list . "operator") */}}
{{- define "durable.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "durable.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "durable.componentLabels" -}}
{{ include "durable.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "durable.operator.fullname" -}}
{{- printf "%s-operator" (include "durable.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "durable.worker.fullname" -}}
{{- printf "%s-worker" (include "durable.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "durable.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "durable.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "durable.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "durable.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "durable.worker.serviceAccountName" -}}
{{- if .Values.worker.serviceAccount.create -}}
{{- default (include "durable.worker.fullname" .) .Values.worker.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.worker.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "durable.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "durable.worker.image" -}}
{{- $repo := default .Values.image.repository .Values.worker.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.worker.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* Secret and key that hold DURABLE_DATABASE_URL. */}}
{{- define "durable.database.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "durable.postgresql.fullname" . -}}
{{- else -}}
{{- required "database.existingSecret is required: name a Secret holding the PostgreSQL URL, or set postgresql.enabled=true for a trial database" .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "durable.database.secretKey" -}}
{{- if .Values.postgresql.enabled -}}url{{- else -}}{{ .Values.database.existingSecretKey }}{{- end -}}
{{- end -}}

{{/* Environment shared by the operator and the workers. */}}
{{- define "durable.databaseEnv" -}}
- name: DURABLE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "durable.database.secretName" . }}
      key: {{ include "durable.database.secretKey" . }}
- name: DURABLE_SCHEMA
  value: {{ .Values.database.schema | quote }}
{{- end -}}

{{/* Writable scratch space: the root filesystem is read-only. */}}
{{- define "durable.scratchVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/durable
{{- end -}}

{{- define "durable.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
- name: home
  emptyDir:
    sizeLimit: 16Mi
{{- end -}}

{{/* Namespaces the operator serves; empty list means all namespaces. */}}
{{- define "durable.operator.clusterWide" -}}
{{- if empty .Values.operator.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/* Operator RBAC rules that are cluster-scoped in every mode. */}}
{{- define "durable.operator.clusterRules" -}}
# kopf: discover the served resources and notice CRDs being (re)installed.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end -}}

{{/* Operator RBAC rules on namespaced resources (in a ClusterRole or in a Role per namespace).
Exactly what the operator was seen to call (Kopf only watches and merge-patches; it never GETs
or PUTs these), plus the two verbs schedules need. */}}
{{- define "durable.operator.namespacedRules" -}}
# runs: watch, finalizers and Kopf's annotations; schedules create runs and prune their history.
- apiGroups: [durable.dev]
  resources: [workflowruns]
  verbs: [list, watch, patch, create, delete]
# schedules: only observed; their state lives in status.
- apiGroups: [durable.dev]
  resources: [workflowschedules]
  verbs: [list, watch]
- apiGroups: [durable.dev]
  resources: [workflowruns/status, workflowschedules/status]
  verbs: [patch]
# Kubernetes Events on phase changes (and Kopf's handler errors); each is a new object.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.operator.rbac.readConfigMaps }}
# runs: spec.inputFrom.configMapKeyRef.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
{{- end }}
{{- if .Values.operator.rbac.readSecrets }}
# runs: spec.inputFrom.secretKeyRef.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- end -}}

{{/* With the bundled PostgreSQL, wait for it (and migrate) before the main container starts, instead of crash-looping. */}}
{{- define "durable.waitForDatabase" -}}
{{- if .Values.postgresql.enabled -}}
- name: wait-for-database
  image: {{ include "durable.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - sh
    - -c
    - 'for i in $(seq 1 150); do durable migrate && exit 0; sleep 2; done; echo "PostgreSQL not reachable after 300s" >&2; exit 1'
  env:
    {{- include "durable.databaseEnv" . | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "durable.scratchVolumeMounts" . | nindent 4 }}
{{- end -}}
{{- end -}}
